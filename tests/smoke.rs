mod common;
use common::*;
use shmflow::{Backpressure, Mode, Ring};

#[test]
fn fork_round_trip() {
    let name = unique_name("smoke");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([64, 64])
        .slots(4)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    let n2 = name.clone();
    let child = fork_child(move || {
        let ring = Ring::<u8>::open(&n2).unwrap();
        let mut w = ring.writer().unwrap();
        for _ in 0..100 {
            let mut s = w.reserve().unwrap();
            let seq = s.seq();
            fill(seq, s.as_mut_bytes());
            s.commit();
        }
        0
    });
    let mut n = 0;
    loop {
        match reader.recv() {
            Ok(f) => {
                assert!(check(f.seq(), f.as_bytes()));
                assert_eq!(f.seq(), n);
                n += 1;
            }
            Err(shmflow::RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(n, 100);
    child.join_ok();
}
