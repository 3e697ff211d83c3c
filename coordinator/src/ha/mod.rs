//! Several coordinator replicas on one PostgreSQL (docs/ha.md): the leader
//! lease and its fencing epoch.
