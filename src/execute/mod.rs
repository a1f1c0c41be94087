//! Running statements that need more than one server: for now two-phase
//! commit of transactions that wrote on several shards, and the recovery
//! of those a crash left in doubt.

pub mod twophase;
