//! Identifiers: prefixed ULIDs, so they sort by creation time (cursor pagination relies on it)
//! and say what they name.

pub fn subscription_id() -> String {
    format!("sub_{}", ulid::Ulid::new())
}

pub fn webhook_id() -> String {
    format!("msg_{}", ulid::Ulid::new())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_prefixed_and_sortable() {
        let a = super::subscription_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::subscription_id();
        assert!(a.starts_with("sub_") && a.len() == 30);
        assert!(a < b);
        assert!(super::webhook_id().starts_with("msg_"));
    }
}
