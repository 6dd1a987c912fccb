//! `decode_startup` on arbitrary bytes, as the first bytes a client sends:
//! decode packet after packet until the codec wants more input or errors.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_postgres::codec::startup::decode_startup;
use portcullis_postgres::codec::MAX_STARTUP_LEN;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode_startup(&mut buf) {
            Ok(Some(_packet)) => {
                // A complete packet is consumed: at least its length word and
                // code, never more than the startup cap.
                let used = before - buf.len();
                assert!(used >= 8, "consumed {used} bytes for a packet");
                assert!(used <= MAX_STARTUP_LEN, "consumed {used} bytes");
            }
            Ok(None) => {
                // Waiting for more must not eat input.
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
});
