//! The appservice registration file given to the homeserver.

use serde::Serialize;

use crate::config::Config;
use crate::namespace::Namespace;

#[derive(Serialize)]
struct Registration<'a> {
    id: &'a str,
    /// Always present: Conduit rejects a registration without it.
    url: &'a str,
    as_token: &'a str,
    hs_token: &'a str,
    sender_localpart: &'a str,
    rate_limited: bool,
    namespaces: Namespaces,
    /// Ephemeral events and to-device messages in transactions (MSC2409).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    receive_ephemeral: bool,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral", skip_serializing_if = "std::ops::Not::not")]
    push_ephemeral: bool,
    /// Device lists and one-time key counts in transactions (MSC3202).
    #[serde(rename = "org.matrix.msc3202", skip_serializing_if = "std::ops::Not::not")]
    transaction_extensions: bool,
    /// Devices created and asserted with the as_token (MSC4190).
    #[serde(rename = "io.element.msc4190", skip_serializing_if = "std::ops::Not::not")]
    device_management: bool,
}

#[derive(Serialize)]
struct Namespaces {
    users: Vec<NamespaceEntry>,
    aliases: Vec<NamespaceEntry>,
    rooms: Vec<NamespaceEntry>,
}

#[derive(Serialize)]
struct NamespaceEntry {
    exclusive: bool,
    regex: String,
}

/// The registration YAML for `config`.
pub fn registration_yaml(config: &Config) -> String {
    let namespace = Namespace::from_config(config);
    let e2ee = config.e2ee.enabled;
    let pushed = e2ee && config.e2ee.mode == crate::config::E2eeMode::Transactions;
    let registration = Registration {
        id: &config.appservice.id,
        url: &config.appservice.url,
        as_token: &config.appservice.as_token,
        hs_token: &config.appservice.hs_token,
        sender_localpart: &config.bot.localpart,
        rate_limited: false,
        namespaces: Namespaces {
            users: vec![NamespaceEntry { exclusive: true, regex: namespace.user_regex() }],
            aliases: vec![NamespaceEntry { exclusive: true, regex: namespace.alias_regex() }],
            rooms: vec![],
        },
        receive_ephemeral: pushed,
        push_ephemeral: pushed,
        transaction_extensions: e2ee,
        device_management: e2ee && config.e2ee.devices != crate::config::E2eeDevices::Login,
    };
    serde_yaml::to_string(&registration).expect("registration serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_every_field_a_homeserver_needs() {
        let config = Config::parse(
            r#"
            [homeserver]
            url = "http://127.0.0.1:8008"
            server_name = "example.org"
            [appservice]
            url = "http://10.0.0.2:29330"
            as_token = "aaaaaaaaaaaaaaaaaaaa"
            hs_token = "bbbbbbbbbbbbbbbbbbbb"
            "#,
        )
        .unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&registration_yaml(&config)).unwrap();
        assert_eq!(yaml["id"], "mosaic");
        assert_eq!(yaml["url"], "http://10.0.0.2:29330");
        assert_eq!(yaml["sender_localpart"], "mosaic-bot");
        assert_eq!(yaml["rate_limited"], false);
        let users = yaml["namespaces"]["users"][0]["regex"].as_str().unwrap();
        let re = regex::Regex::new(users).unwrap();
        assert!(re.is_match("@mosaic_agent_echo:example.org"));
        assert!(re.is_match("@mosaic-bot:example.org"));
        assert_eq!(yaml["namespaces"]["users"][0]["exclusive"], true);
        assert!(yaml["namespaces"]["aliases"][0]["regex"].as_str().unwrap().starts_with("^#mosaic\\-"));
        // Encrypted rooms need devices, to-device messages and key counts from the homeserver.
        for flag in
            ["receive_ephemeral", "de.sorunome.msc2409.push_ephemeral", "org.matrix.msc3202", "io.element.msc4190"]
        {
            assert_eq!(yaml[flag], true, "{flag}");
        }
    }

    #[test]
    fn devices_made_by_login_are_not_announced_as_msc4190() {
        let mut config = Config::parse(crate::config::tests::MINIMAL).unwrap();
        config.e2ee.devices = crate::config::E2eeDevices::Login;
        let yaml: serde_yaml::Value = serde_yaml::from_str(&registration_yaml(&config)).unwrap();
        assert!(yaml.get("io.element.msc4190").is_none(), "{yaml:?}");
        assert_eq!(yaml["org.matrix.msc3202"], true);
    }
}
