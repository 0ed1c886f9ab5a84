//! The Redis Cluster launcher itself: the DC-aware layout, and healing after
//! the loss of a whole DC.

use herald_tests::redis_cluster::DCS;
use herald_tests::RedisCluster;

/// Every master is in its own DC; each master's two replicas are in the two
/// other DCs.
fn assert_layout(cluster: &RedisCluster) {
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters: {masters:?}");
    let mut master_dcs: Vec<usize> = masters.iter().map(|&m| cluster.dc_of(m)).collect();
    master_dcs.sort();
    assert_eq!(
        master_dcs,
        (0..DCS).collect::<Vec<_>>(),
        "masters {masters:?}"
    );
    for &m in &masters {
        let mut replica_dcs: Vec<usize> = cluster
            .replicas_of(m)
            .iter()
            .map(|&r| cluster.dc_of(r))
            .collect();
        replica_dcs.sort();
        let others: Vec<usize> = (0..DCS).filter(|&d| d != cluster.dc_of(m)).collect();
        assert_eq!(replica_dcs, others, "replicas of master {m}");
    }
}

#[test]
fn layout_and_dc_loss() {
    let mut cluster = RedisCluster::start();
    assert_eq!(cluster.ports().len(), 9);
    assert_eq!(cluster.seeds().split(',').count(), 9);
    assert_layout(&cluster);

    let lost = 1;
    let lost_master = cluster
        .masters()
        .into_iter()
        .find(|&m| cluster.dc_of(m) == lost)
        .expect("a master in DC1");
    cluster.kill_dc(lost);
    let took = cluster.wait_healthy_without(lost);
    eprintln!("[redis_cluster] healthy again {took:?} after DC{lost} was killed");
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "masters after the loss: {masters:?}");
    assert!(!masters.contains(&lost_master), "{masters:?}");
    assert!(masters.iter().all(|&m| cluster.dc_of(m) != lost));
}
