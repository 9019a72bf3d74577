//! Identifiers: prefixed ULIDs, so they sort by creation time (cursor pagination relies on it)
//! and say what they name. A monotonic generator keeps ids made within one millisecond in order.

use std::sync::Mutex;

static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

fn next() -> ulid::Ulid {
    let mut g = GENERATOR.lock().unwrap();
    let g = g.get_or_insert_with(ulid::Generator::new);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random id then.
    g.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

pub fn subscription_id() -> String {
    format!("sub_{}", next())
}

pub fn webhook_id() -> String {
    format!("msg_{}", next())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_and_sortable() {
        let ids: Vec<String> = (0..1000).map(|_| super::subscription_id()).collect();
        assert!(ids[0].starts_with("sub_") && ids[0].len() == 30);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "monotonic within a millisecond"
        );
        assert!(super::webhook_id().starts_with("msg_"));
    }
}
