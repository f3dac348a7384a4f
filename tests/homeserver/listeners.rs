//! `[admin] listen`: the admin API and `/metrics` on an address of their own, gone from
//! the address the homeserver pushes to; `[metrics] token` guarding `/metrics`.

use crate::support::{free_port, mosaic, slot};

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_operators_and_the_push_address_only_the_homeserver() {
    let slot = slot("listeners");
    let admin_address = format!("127.0.0.1:{}", free_port());
    let admin_token = slot.admin_token();
    slot.write_config_with(
        &format!(
            "[admin]\ntoken = \"{admin_token}\"\nlisten = \"{admin_address}\"\n\n[metrics]\ntoken = \"{METRICS_TOKEN}\"\n"
        ),
        "",
    );
    let _service = crate::support::Service::start(&slot).await;
    let admin = format!("http://{admin_address}");
    let push = slot.url();
    let http = reqwest::Client::new();

    // The admin API answers on the admin address only.
    let accounts = http.get(format!("{admin}/_mosaic/v1/accounts")).bearer_auth(&admin_token).send().await.unwrap();
    assert_eq!(accounts.status(), 200);
    let on_push = http.get(format!("{push}/_mosaic/v1/accounts")).bearer_auth(&admin_token).send().await.unwrap();
    assert_eq!(on_push.status(), 404);

    // So do the metrics, and only with their token.
    let missing = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.text().await.unwrap().contains("Authorization: Bearer"));
    let wrong = http.get(format!("{admin}/metrics")).bearer_auth("not-the-token").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let scraped = http.get(format!("{admin}/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("mosaic_adapter_health{channel=\"matrix\"}"));
    let on_push = http.get(format!("{push}/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap();
    assert_eq!(on_push.status(), 404);

    // The homeserver still reaches the push address, and doctor says where what is.
    let doctor = mosaic(&slot, &["doctor"]).expect_success();
    assert!(doctor.contains("OK    ping"), "{doctor}");
    assert!(
        doctor.contains(&format!("the admin API and /metrics (token required) are on {admin_address}")),
        "{doctor}"
    );
}
