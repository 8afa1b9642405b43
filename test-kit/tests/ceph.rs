//! The test kit's Ceph cluster: it starts from Debian's packages, serves
//! an image written with `rbd import`, and keeps the data across an OSD
//! restart (what the RBD engine's restart test relies on).

use viaduct_test_kit::ceph::{Cluster, IMAGE, IMAGE_SIZE};

#[test]
fn cluster_starts_serves_and_survives_an_osd_restart() {
    let c = Cluster::start("kit").expect("ceph cluster");
    eprintln!("ceph start-up: {:.1} s", c.started_in.as_secs_f64());
    let info = c
        .rbd(&["info", "--format", "json", &format!("rbd/{IMAGE}")])
        .unwrap();
    assert!(info.contains(&format!("\"size\":{IMAGE_SIZE}")), "{info}");

    let dir = std::env::temp_dir().join(format!("kit-ceph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pattern");
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| u8::try_from(i / 512 % 251).unwrap())
        .collect();
    std::fs::write(&file, &data).unwrap();
    c.import(&file, "imported").unwrap();
    assert_eq!(c.export("imported", data.len()).unwrap(), data);

    c.restart_osd().unwrap();
    assert_eq!(
        c.export("imported", data.len()).unwrap(),
        data,
        "data lost across the OSD restart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
