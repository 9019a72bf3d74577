//! The committed OpenAPI document is what the code serves at `/openapi.json`, so that a change
//! of the API shows in review as a change of `docs/openapi.json`.

use std::path::Path;

const COMMITTED: &str = "docs/openapi.json";

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(COMMITTED);
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    // `herald openapi` prints the document and a newline.
    let generated = herald_api::openapi().to_pretty_json().unwrap() + "\n";
    assert!(
        on_disk == generated,
        "{COMMITTED} differs from the API's OpenAPI document; regenerate it with \
         `cargo run -p herald-api -- openapi > {COMMITTED}`"
    );
}
