//! The deployment files parse and agree with each other and with the code: ports, paths,
//! environment variables, the Conduit config, the Prometheus target and the Grafana
//! dashboard's metrics.

use std::collections::BTreeSet;
use std::path::Path;

use mosaic_as::config::Config;
use mosaic_as::matrix::registration::registration_yaml;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Variables a compose file interpolates: `${NAME}`, `${NAME:-x}`, `${NAME:?x}`.
fn interpolated(text: &str) -> BTreeSet<String> {
    text.split("${")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

/// Variables `.env.example` names, set or commented out.
fn env_example_names() -> BTreeSet<String> {
    read("deploy/.env.example")
        .lines()
        .map(|l| l.trim_start_matches('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name.to_string())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

fn example_config() -> Config {
    let mut config = Config::parse(&read("deploy/mosaic-as.toml.example")).expect("the example config parses");
    config.apply_env(|name| match name {
        "MOSAIC_AS_AS_TOKEN" => Some("a".repeat(64)),
        "MOSAIC_AS_HS_TOKEN" => Some("b".repeat(64)),
        _ => None,
    });
    config.validate().expect("the example config is valid once the tokens come from the environment");
    config
}

#[test]
fn compose_files_name_only_documented_variables_and_wire_the_services() {
    let documented = env_example_names();
    for file in
        ["deploy/docker-compose.yml", "deploy/docker-compose.sqlite.yml", "deploy/docker-compose.monitoring.yml"]
    {
        for name in interpolated(&read(file)) {
            assert!(documented.contains(&name), "{file} uses ${{{name}}}, which deploy/.env.example does not name");
        }
    }

    for file in ["deploy/docker-compose.yml", "deploy/docker-compose.sqlite.yml"] {
        let compose = yaml(file);
        let services = &compose["services"];
        let conduit = &services["conduit"];
        assert_eq!(conduit["image"], "matrixconduit/matrix-conduit:latest", "{file}");
        assert_eq!(conduit["environment"]["CONDUIT_CONFIG"], "/etc/conduit/conduit.toml", "{file}");
        assert!(
            conduit["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| v == "./conduit.toml:/etc/conduit/conduit.toml:ro"),
            "{file}"
        );
        let mosaic = &services["mosaic-as"];
        assert_eq!(mosaic["build"]["context"], "..", "{file}");
        assert_eq!(mosaic["build"]["dockerfile"], "Dockerfile", "{file}");
        for var in ["MOSAIC_AS_AS_TOKEN", "MOSAIC_AS_HS_TOKEN", "MOSAIC_AS_ADMIN_TOKEN", "MOSAIC_AS_TELEGRAM_TOKEN"] {
            assert!(mosaic["environment"][var].is_string(), "{file}: mosaic-as lacks {var}");
        }
        assert!(mosaic["environment"]["MOSAIC_AS_DISCORD_TOKEN"].is_string(), "{file}");
        assert_eq!(mosaic["environment"]["MOSAIC_AS_CONFIG"], "/data/mosaic-as.toml", "{file}");
        let volumes: Vec<&str> = mosaic["volumes"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert!(
            volumes.contains(&"./mosaic-as.toml:/data/mosaic-as.toml:ro") && volumes.contains(&"mosaic-data:/data")
        );
        assert_eq!(mosaic["restart"], "unless-stopped", "{file}");
        assert_eq!(mosaic["depends_on"]["conduit"]["condition"], "service_started", "{file}");
    }

    let postgres_compose = yaml("deploy/docker-compose.yml");
    let services = &postgres_compose["services"];
    assert_eq!(services["postgres"]["image"], "postgres:16");
    assert!(services["postgres"]["healthcheck"]["test"].is_sequence());
    assert_eq!(services["mosaic-as"]["depends_on"]["postgres"]["condition"], "service_healthy");
    let url = services["mosaic-as"]["environment"]["MOSAIC_AS_DATABASE_URL"].as_str().unwrap();
    assert!(
        url.starts_with("postgres://mosaic:${POSTGRES_PASSWORD") && url.ends_with("@postgres:5432/mosaic"),
        "{url}"
    );
    let sqlite_compose = yaml("deploy/docker-compose.sqlite.yml");
    assert!(sqlite_compose["services"]["postgres"].is_null());
    assert!(sqlite_compose["services"]["mosaic-as"]["environment"]["MOSAIC_AS_DATABASE_URL"].is_null());
}

#[test]
fn the_container_config_matches_conduit_and_the_compose_network() {
    let config = example_config();
    assert_eq!(config.appservice.listen.to_string(), "0.0.0.0:29330");
    assert_eq!(config.appservice.url, "http://mosaic-as:29330");
    assert_eq!(config.homeserver.url, "http://conduit:6167");
    assert_eq!(config.database.url, "sqlite:///data/mosaic-as.db");
    let registration: Yaml = serde_yaml::from_str(&registration_yaml(&config)).unwrap();
    assert_eq!(registration["url"], "http://mosaic-as:29330");

    let conduit: toml::Table = toml::from_str(&read("deploy/conduit.toml")).expect("conduit.toml is TOML");
    let global = conduit["global"].as_table().expect("Conduit reads the [global] table");
    assert_eq!(global["server_name"].as_str(), Some(config.homeserver.server_name.as_str()));
    assert_eq!(global["database_backend"].as_str(), Some("rocksdb"));
    assert_eq!(global["database_path"].as_str(), Some("/var/lib/matrix-conduit/"));
    assert_eq!(global["port"].as_integer(), Some(6167));
    assert_eq!(global["address"].as_str(), Some("0.0.0.0"));
    assert_eq!(global["allow_registration"].as_bool(), Some(false));
    let volume = yaml("deploy/docker-compose.yml")["services"]["conduit"]["volumes"][1].as_str().unwrap().to_string();
    assert_eq!(volume, "conduit-data:/var/lib/matrix-conduit");
}

#[test]
fn the_image_listens_where_the_config_and_the_health_check_say() {
    let dockerfile = read("Dockerfile");
    let port = example_config().appservice.listen.port();
    assert_eq!(port, mosaic_as::config::default_listen().port());
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    assert!(dockerfile.contains(&format!("http://127.0.0.1:{port}/health")));
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("USER 10001:10001") && dockerfile.contains("VOLUME [\"/data\"]"));
    assert!(dockerfile.contains("ENTRYPOINT [\"mosaic-as\"]"));
    assert!(dockerfile.contains("CMD [\"--config\", \"/data/mosaic-as.toml\", \"serve\"]"));
    // Every [[bench]] of Cargo.toml gets a placeholder, or Cargo cannot read the manifest.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    for bench in manifest["bench"].as_array().unwrap() {
        let name = bench["name"].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!("benches/{name}.rs")),
            "the Dockerfile lacks a placeholder for bench {name}"
        );
    }
    let ignore = read(".dockerignore");
    for path in ["target/", ".synapse/", ".git/", ".env"] {
        assert!(ignore.lines().any(|l| l == path), ".dockerignore lacks {path}");
    }
    for needed in ["src", "migrations", "Cargo.toml", "Cargo.lock"] {
        assert!(!ignore.lines().any(|l| l.trim_end_matches('/') == needed), ".dockerignore excludes {needed}");
    }
}

#[test]
fn prometheus_scrapes_the_metrics_endpoint() {
    let prometheus = yaml("deploy/prometheus.yml");
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["job_name"], "mosaic-as");
    assert_eq!(job["metrics_path"], "/metrics");
    assert_eq!(job["static_configs"][0]["targets"][0], "mosaic-as:29330");
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["url"], "http://prometheus:9090");
    let dashboards = yaml("deploy/grafana/provisioning/dashboards/mosaic-as.yml");
    assert_eq!(dashboards["providers"][0]["options"]["path"], "/etc/grafana/dashboards");
}

#[test]
fn the_dashboard_is_a_grafana_model_covering_every_metric() {
    let dashboard: Json = serde_json::from_str(&read("deploy/grafana-dashboard.json")).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "mosaic-as");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus")
    );

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{} lacks gridPos.{key}", panel["title"]);
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for metric in [
        "mosaic_transactions_received_total",
        "mosaic_events_received_total",
        "mosaic_inbox_lag_seconds_bucket",
        "mosaic_outbox_depth",
        "mosaic_outbox_retries_total",
        "mosaic_sends_total",
        "mosaic_agent_turns_total",
        "mosaic_agent_tokens_total",
        "mosaic_agent_turn_seconds_bucket",
        "mosaic_link_attempts_total",
        "mosaic_adapter_health",
    ] {
        assert!(exprs.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_reads_secrets_from_a_file() {
    let unit = read("deploy/mosaic-as.service");
    for line in [
        "ExecStart=/usr/local/bin/mosaic-as --config /etc/mosaic-as/mosaic-as.toml serve",
        "EnvironmentFile=-/etc/mosaic-as/env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/mosaic-as",
        "StateDirectory=mosaic-as",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
}
