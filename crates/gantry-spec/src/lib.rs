//! The app spec. (Being written; see the module docs once it lands.)
#![forbid(unsafe_code)]
