//! The routing table: as the control plane submits it and its validation
//! (`table`), on disk (`persist`), compiled and matched, swapped atomically
//! (`router`, phase 1 of the request path), and the choices within a route:
//! sticky sessions (`sticky`) and the instance of a set (`balance`, phase 3).

pub(crate) mod balance;
pub(crate) mod persist;
pub(crate) mod router;
pub(crate) mod sticky;
pub(crate) mod table;
