//! What an upstream server sends: every backend body parser the gateway uses
//! on arbitrary bodies (the frame layer is covered by the `frontend` target).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_postgres::codec::backend::{
    command_rows, error_field, parse_auth_request, parse_backend_key, parse_error_fields,
    parse_parameter_status,
};
use portcullis_postgres::codec::rows::{encode_data_row, parse_data_row, parse_row_description};

fuzz_target!(|body: &[u8]| {
    let _ = parse_auth_request(body);
    if let Ok(fields) = parse_error_fields(body) {
        for code in [b'S', b'V', b'C', b'M', b'D', b'H'] {
            let _ = error_field(&fields, code);
        }
    }
    let _ = parse_parameter_status(body);
    if let Ok(_key) = parse_backend_key(body) {
        assert_eq!(body.len(), 8);
    }
    let _ = command_rows(body);
    let _ = parse_row_description(body);
    if let Ok(columns) = parse_data_row(body) {
        // A DataRow that parses re-encodes to exactly the bytes it came from.
        let encoded = encode_data_row(BytesMut::new(), &columns).expect("a parsed row re-encodes");
        assert_eq!(&encoded[5..], body);
    }
});
