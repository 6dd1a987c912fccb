//! What a client sends after startup: split arbitrary bytes into tagged
//! frames with `decode_frame` and parse each with `FrontendMessage::parse`
//! (and `password_text` for password messages).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_postgres::codec::frontend::{password_text, FrontendMessage};
use portcullis_postgres::codec::{decode_frame, peek_frame_len};

// Small enough that the fuzzer reaches the "too large" path, large enough
// for any input it generates.
const MAX_LEN: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let peeked = peek_frame_len(&buf, MAX_LEN);
        match decode_frame(&mut buf, MAX_LEN) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                assert_eq!(peeked, Ok(Some(used)));
                assert_eq!(used, frame.body.len() + 5);
                if let Ok(FrontendMessage::Password(payload)) = FrontendMessage::parse(&frame) {
                    let _ = password_text(payload);
                }
                // Re-encoding gives back the bytes that were consumed.
                let mut out = BytesMut::new();
                frame.encode_into(&mut out);
                assert_eq!(&out[..], &data[data.len() - before..][..used]);
            }
            Ok(None) => {
                assert_eq!(peeked, Ok(None));
                assert_eq!(buf.len(), before);
                break;
            }
            Err(e) => {
                assert_eq!(peeked, Err(e));
                break;
            }
        }
    }
});
