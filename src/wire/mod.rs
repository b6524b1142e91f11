//! HTTP on the wire, below any request logic: HTTP/1.1 heads ([`h1`]) and chunked
//! bodies ([`chunked`]), header rules ([`hygiene`]) and path normalisation ([`path`]).
//! Pure functions over bytes and header maps; nothing here knows routes or tokens.

pub mod chunked;
pub mod h1;
pub mod hygiene;
pub mod path;
