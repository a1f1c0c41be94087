//! pgbench through the proxy: initialization (DDL, client-side COPY,
//! VACUUM) and select-only runs in all three query protocols.

use std::time::Duration;

use crate::common::*;

#[test]
fn pgbench_init_and_select_only_in_every_protocol() {
    let _tables = pgbench_tables_lock();
    let proxy = TestProxy::start(|_| {});
    pgbench(
        proxy.port,
        &["-i", "-s", "5", "-q"],
        Duration::from_secs(120),
    )
    .ok("pgbench -i -s 5");
    let count = psql(
        &cluster().direct_url(),
        "app",
        true,
        &["-qAt", "-c", "select count(*) from pgbench_accounts"],
        None,
    )
    .ok("count accounts");
    assert_eq!(count.stdout.trim(), "500000");

    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(
            proxy.port,
            &["-n", "-S", "-M", mode, "-c", "16", "-j", "2", "-T", "3"],
            Duration::from_secs(60),
        )
        .ok(&format!("pgbench -S -M {mode}"));
        let text = format!("{}\n{}", out.stdout, out.stderr);
        assert!(text.contains(&format!("query mode: {mode}")), "{text}");
        let processed = number_after(&text, "number of transactions actually processed:");
        let failed = number_after(&text, "number of failed transactions:");
        let tps = number_after(&text, "tps =");
        assert_eq!(failed, 0.0, "-M {mode}: failed transactions\n{text}");
        assert!(processed > 0.0, "-M {mode}: nothing processed\n{text}");
        assert!(tps > 0.0, "-M {mode}: tps = {tps}\n{text}");
        // Errors such as "client 3 aborted" would also show here.
        assert!(!text.contains("aborted"), "-M {mode}:\n{text}");
        eprintln!("pgbench -S -M {mode}: {processed} transactions, tps {tps}");
    }
}
