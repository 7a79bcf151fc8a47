//! Drills against real node processes (workload, nemesis, invariant checkers), the load
//! generator and the etcd baseline. Thin until the drills issue lands.
