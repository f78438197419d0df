//! Walks read several VMs at once and still answer in name order, whatever the number
//! of threads.

use std::sync::Arc;

use cvol_datastore::{Datastore, VmSpec};
use cvol_format::{ProviderConfig, ProviderId, VmName};
use cvol_share::LocalShare;

#[test]
fn a_parallel_walk_lists_every_vm_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (share_dir, pool) = (dir.path().join("share"), dir.path().join("pool"));
    std::fs::create_dir_all(&share_dir).unwrap();
    std::fs::create_dir_all(&pool).unwrap();
    let provider = ProviderConfig {
        id: ProviderId::new("pool").unwrap(),
        kind: "file".into(),
        settings: [("path".to_string(), pool.display().to_string())].into(),
    };
    let share = Arc::new(LocalShare::open(&share_dir).unwrap());
    let ds = Datastore::create(share, "walk", vec![provider], "host-a").unwrap();
    let spec = VmSpec {
        disks: vec![1 << 20],
        memory_mib: 128,
        cpus: 1,
        provider: None,
    };
    let mut expected: Vec<String> = (0..30).map(|i| format!("vm{i:02}")).collect();
    for name in &expected {
        ds.vm_create(&VmName::new(name).unwrap(), &spec).unwrap();
    }
    expected.sort();
    for parallel in [1, 3, 8, 64] {
        let ds = ds_with(&ds, parallel);
        let listed: Vec<String> = ds.vm_list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(listed, expected, "{parallel} at once");
        let report = ds.fsck(&Default::default()).unwrap();
        assert_eq!((report.vms, report.disks), (30, 30), "{parallel} at once");
        assert!(report.is_clean(), "{parallel} at once");
    }
}

fn ds_with(ds: &Datastore, parallel: usize) -> Datastore {
    Datastore::open(ds.share_arc(), ds.host())
        .unwrap()
        .with_walk_parallel(parallel)
}
