//! Authentication variants: md5 and trust clients, a SCRAM verifier in the
//! config, and backends that authenticate the proxy with md5.

use std::time::Duration;

use crate::common::*;

async fn current_user(config: &tokio_postgres::Config) -> String {
    let (client, _conn) = connect(config).await;
    client
        .query_one("select current_user::text", &[])
        .await
        .expect("select current_user")
        .get(0)
}

#[test]
fn md5_and_trust_client_authentication() {
    let md5_stored = postgres_protocol::password::md5(b"hashed_pw", "md5hash");
    let proxy = TestProxy::start(|c| {
        add_user(c, "name = \"md5u\"\npassword = \"md5_pw\"\nauth = \"md5\"\nserver_user = \"app\"\nserver_password = \"app\"");
        add_user(
            c,
            &format!("name = \"md5hash\"\npassword = \"{md5_stored}\"\nauth = \"md5\"\nserver_user = \"app\"\nserver_password = \"app\""),
        );
        add_user(
            c,
            "name = \"trusty\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"app\"",
        );
    });
    block_on(Duration::from_secs(60), async move {
        // md5 with a plain password in the config.
        assert_eq!(
            current_user(&proxy.pg_config("md5u", "md5_pw")).await,
            "app"
        );
        let e = try_connect(&proxy.pg_config("md5u", "wrong"))
            .await
            .map(drop)
            .expect_err("wrong md5 password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{e}");

        // md5 with the md5 hash in the config.
        assert_eq!(
            current_user(&proxy.pg_config("md5hash", "hashed_pw")).await,
            "app"
        );
        let e = try_connect(&proxy.pg_config("md5hash", "md5_pw"))
            .await
            .map(drop)
            .expect_err("wrong password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{e}");

        // trust: no password at all.
        let mut no_pw = tokio_postgres::Config::new();
        no_pw
            .host("127.0.0.1")
            .port(proxy.port)
            .user("trusty")
            .dbname("app");
        assert_eq!(current_user(&no_pw).await, "app");
        // A password the client happens to have is simply never asked for.
        assert_eq!(
            current_user(&proxy.pg_config("trusty", "whatever")).await,
            "app"
        );
    });
}

#[test]
fn scram_verifier_in_config() {
    let verifier = postgres_protocol::password::scram_sha_256(b"verifier_pw");
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    // The verifier PostgreSQL itself stores for app (password "app").
    let from_server = superuser_sql("select rolpassword from pg_authid where rolname = 'app'");
    assert!(
        from_server.starts_with("SCRAM-SHA-256$4096:"),
        "{from_server}"
    );
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            &format!("name = \"scramv\"\npassword = \"{verifier}\"\nserver_user = \"app\"\nserver_password = \"app\""),
        );
        // Replace app's plain password by the server's verifier.
        let users = c["users"].as_array_mut().expect("users");
        let app = users
            .iter_mut()
            .find(|u| u["name"].as_str() == Some("app"))
            .expect("user app in the cluster config");
        app["password"] = toml::Value::String(from_server.clone());
        app.as_table_mut()
            .expect("table")
            .insert("server_password".into(), "app".into());
    });
    block_on(Duration::from_secs(60), async move {
        assert_eq!(
            current_user(&proxy.pg_config("scramv", "verifier_pw")).await,
            "app"
        );
        let e = try_connect(&proxy.pg_config("scramv", "app"))
            .await
            .map(drop)
            .expect_err("wrong password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{e}");

        assert_eq!(current_user(&proxy.pg_config("app", "app")).await, "app");
        let e = try_connect(&proxy.pg_config("app", "verifier_pw"))
            .await
            .map(drop)
            .expect_err("wrong password accepted");
        assert_eq!(sqlstate(&e), "28P01", "{e}");
    });
}

#[test]
fn backend_role_with_md5_stored_password() {
    let role = format!("sw_md5_{:06x}", rand::random::<u32>() & 0xffffff);
    create_role(&role, "backend_md5_pw", "md5");
    let stored = superuser_sql(&format!(
        "select rolpassword from pg_authid where rolname = '{role}'"
    ));
    assert!(
        stored.starts_with("md5"),
        "the role's password is not stored as md5: {stored}"
    );
    let proxy = TestProxy::start(|c| {
        add_user(
            c,
            &format!("name = \"bmd5\"\npassword = \"front_pw\"\nserver_user = \"{role}\"\nserver_password = \"backend_md5_pw\""),
        );
    });
    block_on(Duration::from_secs(60), async move {
        let config = proxy.pg_config("bmd5", "front_pw");
        assert_eq!(current_user(&config).await, role);
        // Transaction pooling reuses that backend login.
        let (client, _conn) = connect(&config).await;
        for _ in 0..3 {
            let row = client
                .query_one("select current_user::text, session_user::text", &[])
                .await
                .expect("query");
            assert_eq!(row.get::<_, &str>(0), role);
            assert_eq!(row.get::<_, &str>(1), role);
        }
    });
}

#[test]
fn wrong_server_password_is_reported() {
    let proxy = TestProxy::start(|c| {
        let users = c["users"].as_array_mut().expect("users");
        let app = users
            .iter_mut()
            .find(|u| u["name"].as_str() == Some("app"))
            .expect("user app");
        app.as_table_mut()
            .expect("table")
            .insert("server_password".into(), "not_the_password".into());
    });
    block_on(Duration::from_secs(60), async move {
        let e = try_connect(&proxy.pg_config("app", "app"))
            .await
            .map(drop)
            .expect_err("connected with a wrong server password");
        let msg = db_message(&e);
        assert_eq!(sqlstate(&e), "08004", "{e}");
        assert!(
            msg.contains("password authentication failed for user \"app\""),
            "{msg}"
        );
        assert!(msg.contains("\"s0\""), "{msg}");
    });
}
