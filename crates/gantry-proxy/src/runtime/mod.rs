//! The process: [`Proxy`](server::Proxy) binds and serves (`server`: the
//! listeners, the accept loops, graceful shutdown); one worker thread per
//! core carries client traffic (`worker`); the accepting worker places each
//! new connection on the worker with the fewest open ones (`spread`); hot
//! counters are sharded per worker (`shard`); `handoff` passes the
//! listening sockets to a new process (`gantry proxy upgrade`).

pub(crate) mod handoff;
pub(crate) mod server;
pub(crate) mod shard;
pub(crate) mod spread;
pub(crate) mod worker;
