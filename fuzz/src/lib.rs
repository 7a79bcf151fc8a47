//! The fuzz targets' shared code: the framing of the `request` target's input and its driver.
//!
//! Both files are also compiled into the main workspace's seed test (`node/tests/fuzz_seeds.rs`),
//! so that the committed seeds, the target and the regression runs agree on one framing and one
//! driver.

pub mod frame;
pub mod request;
