//! Running statements that need more than one server. Each way of
//! combining the shards' answers is a small, separately tested function
//! over their frames; committing across shards is its own protocol.
//!
//! - `merge`: ORDER BY as a k-way merge of the shards' sorted rows, then
//!   OFFSET and LIMIT.
//! - `fanout`: sending one request to each of several servers and reading
//!   every answer, the shards working in parallel.
//! - `scatter`: whole answers combined: concatenated, aggregated,
//!   grouped, merged in order, writes summed (`shape`).
//! - `stream`: concatenation and the ORDER BY merge as streams from the
//!   servers to the client, with bounded memory.
//! - `gather`: tier 3, a table's rows copied from a shard into a
//!   temporary table on the merge connection, which answers the statement.
//! - `copysplit`: cutting COPY FROM STDIN data into rows and reading
//!   each row's key field, so each row goes to its shard.
//! - `binary`: reading sort keys from, and writing merged values in, the
//!   binary format.
//! - `twophase`: two-phase commit of transactions that wrote on several
//!   shards, and the recovery of those a crash left in doubt.

pub mod binary;
pub mod copysplit;
pub mod fanout;
pub mod gather;
pub mod merge;
pub mod scatter;
pub mod stream;
pub mod twophase;
