//! The API's body limits, shared by the router, the audit layer and the
//! 413 message.

/// JSON bodies larger than this are refused (413) by the handler's
/// extractor (the limit is set on the API's routes); it is also what the
/// audit layer keeps of one.
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;

/// The largest source bundle `POST …/releases` takes.
pub(crate) const MAX_BUNDLE: usize = 1024 * 1024 * 1024;
