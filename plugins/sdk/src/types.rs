//! Helper methods on the contract's generated types, so connectors read
//! settings, filters and records without repeating the same plumbing.

use serde::de::DeserializeOwned;

use crate::{
    BatchItem, Context, Error, Json, ListRequest, Page, Result, UpsertAction, UpsertOutcome,
    UpsertRequest,
};

impl Context {
    /// The value of the connection setting `name`, if the workflow gave one.
    ///
    /// ```
    /// # use weft_connector_sdk::Context;
    /// let ctx = Context {
    ///     base_url: "https://api.example.com".into(),
    ///     settings: vec![("source_id".into(), "src_1".into())],
    /// };
    /// assert_eq!(ctx.setting("source_id"), Some("src_1"));
    /// assert_eq!(ctx.setting("missing"), None);
    /// ```
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The value of a setting the manifest marks as required, or
    /// [`Error::InvalidInput`] naming it.
    pub fn required_setting(&self, name: &str) -> Result<&str> {
        self.setting(name).ok_or_else(|| {
            Error::invalid_input(format!("the connection must set the `{name}` setting"))
        })
    }

    /// `path` joined to the connection's base URL, with exactly one `/`
    /// between them.
    ///
    /// The host would also join a relative path itself; building the
    /// absolute URL here keeps log lines and errors unambiguous.
    ///
    /// ```
    /// # use weft_connector_sdk::Context;
    /// let ctx = Context { base_url: "https://api.stripe.com".into(), settings: vec![] };
    /// assert_eq!(ctx.url("/v1/customers"), "https://api.stripe.com/v1/customers");
    /// assert_eq!(ctx.url("v1/customers"), "https://api.stripe.com/v1/customers");
    /// ```
    pub fn url(&self, path: &str) -> String {
        let base = self.base_url.trim_end_matches('/');
        let path = path.trim_start_matches('/');
        let mut url = String::with_capacity(base.len() + 1 + path.len());
        url.push_str(base);
        url.push('/');
        url.push_str(path);
        url
    }
}

impl ListRequest {
    /// The filter parsed as `T` (often `serde_json::Map<String, Value>`);
    /// `Ok(None)` when there is none, [`Error::InvalidInput`] when it does
    /// not parse.
    pub fn filter<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.filter
            .as_deref()
            .map(|text| {
                serde_json::from_str(text)
                    .map_err(|e| Error::invalid_input(format!("the list filter is not valid: {e}")))
            })
            .transpose()
    }
}

fn parse_record<T: DeserializeOwned>(record: &str) -> Result<T> {
    serde_json::from_str(record)
        .map_err(|e| Error::invalid_input(format!("the record is not valid: {e}")))
}

impl UpsertRequest {
    /// The desired record parsed as `T`; [`Error::InvalidInput`] when it
    /// does not parse.
    pub fn parse_record<T: DeserializeOwned>(&self) -> Result<T> {
        parse_record(&self.record)
    }
}

impl BatchItem {
    /// The desired record parsed as `T`; [`Error::InvalidInput`] when it
    /// does not parse.
    pub fn parse_record<T: DeserializeOwned>(&self) -> Result<T> {
        parse_record(&self.record)
    }
}

impl UpsertOutcome {
    /// A new record was created; `record` is the vendor's copy of it.
    pub fn created(record: Json) -> Self {
        Self { record, action: UpsertAction::Created }
    }

    /// An existing record was changed; `record` is the vendor's copy after
    /// the write.
    pub fn updated(record: Json) -> Self {
        Self { record, action: UpsertAction::Updated }
    }

    /// An existing record already matched and nothing was written.
    pub fn unchanged(record: Json) -> Self {
        Self { record, action: UpsertAction::Unchanged }
    }
}

impl Page {
    /// A page followed by more from `next_cursor`, or the last page when it
    /// is `None`.
    pub fn new(records: Vec<Json>, next_cursor: Option<String>) -> Self {
        Self { records, next_cursor }
    }

    /// The last page.
    pub fn last(records: Vec<Json>) -> Self {
        Self::new(records, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_joins_with_one_slash() {
        let ctx = Context { base_url: "http://h/".into(), settings: Vec::new() };
        assert_eq!(ctx.url("/a"), "http://h/a");
        assert_eq!(ctx.url("a"), "http://h/a");
    }

    #[test]
    fn bad_filter_is_invalid_input() {
        let request = ListRequest {
            resource: "r".into(),
            cursor: None,
            page_size: 1,
            filter: Some("{".into()),
        };
        let parsed = request.filter::<serde_json::Value>();
        assert!(matches!(parsed, Err(Error::InvalidInput(_))));
        let none = ListRequest { filter: None, ..request };
        assert_eq!(none.filter::<serde_json::Value>(), Ok(None));
    }
}
