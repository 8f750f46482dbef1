//! TLS: the certificates served by SNI and the ACME challenge answers
//! (`certs`), certificates obtained and renewed over ACME (`acme`), and the
//! few fields read from a certificate (`x509`).

pub(crate) mod acme;
pub(crate) mod certs;
pub(crate) mod x509;
