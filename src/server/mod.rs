//! The serving plugin: configuration, task tagging, admin API and the HTTP server.
