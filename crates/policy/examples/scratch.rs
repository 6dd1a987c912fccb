fn main() {
    for q in std::env::args().skip(1) {
        println!("{q:?}\n  key={:?}", portcullis_policy::normalize(&q));
        match portcullis_policy::classify(&q) {
            Ok(c) => {
                for s in c.statements {
                    println!("  {}", serde_json::to_string(&s).unwrap());
                }
            }
            Err(e) => println!("  ERR {e}"),
        }
    }
}
