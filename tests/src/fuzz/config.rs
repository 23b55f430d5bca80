//! `--config` files: any bytes, and JSON built from the API document's field names, parsed
//! as a `VmConfig` and validated. What parses must serialize and parse back the same.

use arbitrary::Unstructured;
use tessera_api::config::VmConfig;

/// The fuzz target.
pub fn run(data: &[u8]) {
    let text = if data.first().is_some_and(|b| b % 4 == 0) {
        data.get(1..).unwrap_or_default().to_vec()
    } else {
        let mut u = Unstructured::new(data.get(1..).unwrap_or_default());
        let Ok(value) = super::api::json(&mut u, 5) else {
            return;
        };
        // Mostly objects at the top, as a config is.
        serde_json::to_vec(&value).unwrap_or_default()
    };
    let Ok(config) = serde_json::from_slice::<VmConfig>(&text) else {
        return;
    };
    let _ = config.validate();
    let again = serde_json::to_vec(&config)
        .ok()
        .and_then(|t| serde_json::from_slice::<VmConfig>(&t).ok());
    assert_eq!(
        again.as_ref(),
        Some(&config),
        "round trip of a parsed config"
    );
}
