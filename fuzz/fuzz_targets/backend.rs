//! What an upstream server sends: every backend body parser the gateway uses
//! on arbitrary bodies (the frame layer is covered by the `frontend` target).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_postgres::codec::backend::{
    command_rows, error_field, parse_auth_request, parse_backend_key, parse_error_fields,
    parse_parameter_status,
};

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
});
