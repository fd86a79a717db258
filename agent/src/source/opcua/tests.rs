//! The `opcua` source without a server: configuration checks, the turning
//! of values and events into events, the monitored-item requests, and the
//! scan for any service that could change a server.
