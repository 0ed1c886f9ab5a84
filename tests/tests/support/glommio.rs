//! Runs a test's future on a glommio executor of its own (for the tests
//! that drive Herald's Redis client and cluster store directly).

use std::future::Future;

pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        // Small: the locked-memory limit here is 8 MiB.
        .io_memory(256 << 10)
        .make()
        .expect("glommio executor (needs io_uring)")
        .run(f)
}
