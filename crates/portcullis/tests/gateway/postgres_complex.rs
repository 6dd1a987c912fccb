//! Statements of any size or depth are decided or refused clearly, and one
//! session sending them harms no other; syntax errors read as PostgreSQL's.

use crate::env::Env;

fn chain(terms: usize) -> String {
    format!("SELECT 1{};\n", " + 1".repeat(terms))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn long_chains_and_deep_statements_are_decided_and_others_keep_working() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    // 60 terms were refused as unparseable; 5,000 aborted the gateway.
    let mut script = chain(60);
    script.push_str(&chain(4_000));
    script.push_str(&chain(5_000));
    script.push_str(&chain(20_000));
    script.push_str(&format!(
        "SELECT {}1{};\n",
        "(".repeat(50_000),
        ")".repeat(50_000)
    ));
    script.push_str(&format!(
        "SELECT {}1{};\n",
        "(SELECT ".repeat(1_000),
        ")".repeat(1_000)
    ));
    script.push_str(&format!("SELECT length('{}');\n", "x".repeat(8 << 20)));
    let neighbour = env.token("ci-job", &["ci"]);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            for _ in 0..5 {
                let out = env.psql(&neighbour, "select count(*) from items;");
                assert!(out.success(), "{}", out.stderr);
                assert_eq!(out.stdout.trim(), "10");
            }
        });
        let out = env.psql(&token, &script);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines, ["61", "4001", "1", "8388608"], "{}", out.stderr);
        assert_eq!(
            out.stderr.matches("statement too complex").count(),
            2,
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("memory exhausted at or near \"(\""),
            "{}",
            out.stderr
        );
        other.join().unwrap();
    });
    let out = env.psql(&token, "select count(*) from items;");
    assert_eq!(out.stdout.trim(), "10", "{}", out.stderr);
    if let Some(pid) = env.gateway_pid() {
        // Generous: analysis stacks and buffers are given back when the statements end.
        let rss = rss_kib(pid);
        assert!(
            rss < 512 * 1024,
            "gateway RSS {rss} KiB after the statements"
        );
    }
}

#[test]
fn syntax_errors_read_as_postgresql_own() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "SELECT 1 FROMM items;\n");
    assert!(
        out.stderr
            .contains("ERROR:  syntax error at or near \"items\"\nLINE 1: SELECT 1 FROMM items;\n                       ^"),
        "{}",
        out.stderr
    );
}
