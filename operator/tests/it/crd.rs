//! The checked-in CRD files are what `herald-operator crd` prints from the Rust type.

use std::path::Path;

fn check(relative: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        on_disk == herald_operator::crd::crd_yaml(),
        "{relative} differs from the WebhookSubscription type; regenerate it with \
         `cargo run -p herald-operator -- crd > {relative}`"
    );
}

#[test]
fn the_repository_crd_matches_the_type() {
    check("crds/webhooksubscription.yaml");
}

#[test]
fn the_chart_crd_matches_the_type() {
    check("charts/herald/crds/webhooksubscription.yaml");
}

#[test]
fn the_crd_says_what_the_api_server_must_enforce() {
    let yaml = herald_operator::crd::crd_yaml();
    for needle in [
        "shortNames:\n    - whs",
        "subresources:\n      status: {}",
        "x-kubernetes-validations",
        "url(self).getScheme() in ['http', 'https']",
        "pattern: ^([0-9]+(ms|s|m|h))+$",
        "jsonPath: .status.subscriptionId",
        "jsonPath: .status.conditions[?(@.type==\"Ready\")].status",
    ] {
        assert!(yaml.contains(needle), "the CRD lacks {needle:?}");
    }
}
