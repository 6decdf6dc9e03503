//! The customer object as the spec's `customer` schema describes it, and
//! how it is rendered, with or without expanded fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

/// A customer, field for field as Stripe returns it by default (API version
/// 2023-08-16): the spec's required fields plus every non-includable one,
/// `null` where unset. Field order is the answer's key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Customer {
    pub id: String,
    #[serde(serialize_with = "object_name", skip_deserializing)]
    pub object: (),
    pub address: Option<Address>,
    pub balance: i64,
    pub created: i64,
    pub currency: Option<String>,
    pub default_source: Option<String>,
    pub delinquent: Option<bool>,
    pub description: Option<String>,
    pub discount: Option<Value>,
    pub email: Option<String>,
    pub invoice_prefix: Option<String>,
    pub invoice_settings: InvoiceSettings,
    pub livemode: bool,
    pub metadata: BTreeMap<String, String>,
    pub name: Option<String>,
    pub next_invoice_sequence: i64,
    pub phone: Option<String>,
    pub preferred_locales: Vec<String>,
    pub shipping: Option<Shipping>,
    pub tax_exempt: Option<String>,
    pub test_clock: Option<String>,
}

fn object_name<S: Serializer>(_: &(), serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("customer")
}

impl Default for Customer {
    /// What `POST /v1/customers` with no parameters stores, less the id,
    /// timestamp and invoice prefix Stripe assigns.
    fn default() -> Self {
        Self {
            id: String::new(),
            object: (),
            address: None,
            balance: 0,
            created: 0,
            currency: None,
            default_source: None,
            delinquent: Some(false),
            description: None,
            discount: None,
            email: None,
            invoice_prefix: None,
            invoice_settings: InvoiceSettings::default(),
            livemode: false,
            metadata: BTreeMap::new(),
            name: None,
            next_invoice_sequence: 1,
            phone: None,
            preferred_locales: Vec::new(),
            shipping: None,
            tax_exempt: Some("none".to_owned()),
            test_clock: None,
        }
    }
}

/// The spec's `address`: every field nullable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Address {
    pub city: Option<String>,
    pub country: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub postal_code: Option<String>,
    pub state: Option<String>,
}

/// A customer's `shipping`: the fields Stripe returns for customers (the
/// carrier and tracking number of the shared `shipping` schema belong to
/// shipments).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Shipping {
    pub address: Address,
    pub name: Option<String>,
    pub phone: Option<String>,
}

/// The spec's `invoice_setting_customer_setting`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct InvoiceSettings {
    pub custom_fields: Option<Vec<CustomField>>,
    pub default_payment_method: Option<String>,
    pub footer: Option<String>,
    pub rendering_options: Option<RenderingOptions>,
}

/// One invoice custom field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct CustomField {
    pub name: String,
    pub value: String,
}

/// How invoices render for this customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RenderingOptions {
    pub amount_tax_display: Option<String>,
}

/// Fields a customer only shows when expanded (`expand[]=tax_ids`).
pub(crate) const INCLUDABLE: [&str; 6] =
    ["cash_balance", "invoice_credit_balance", "sources", "subscriptions", "tax", "tax_ids"];

/// Expandable references; the emulator never sets them, so expanding one
/// leaves its `null`.
pub(crate) const NULL_REFERENCES: [&str; 3] =
    ["default_source", "test_clock", "invoice_settings.default_payment_method"];

/// The answer to a deleted customer: the spec's `deleted_customer`.
pub(crate) fn deleted(id: &str) -> Value {
    json!({"id": id, "object": "customer", "deleted": true})
}

impl Customer {
    /// The customer as JSON with the includable fields in `includes` added
    /// (each one of [`INCLUDABLE`]). The emulator has no payment sources,
    /// subscriptions or tax ids, so those lists are empty.
    pub fn render(&self, includes: &[String]) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        let Value::Object(fields) = &mut value else {
            return value;
        };
        for include in includes {
            let empty_list = |resource: &str| {
                json!({
                    "object": "list",
                    "data": [],
                    "has_more": false,
                    "total_count": 0,
                    "url": format!("/v1/customers/{}/{resource}", self.id),
                })
            };
            let rendered = match include.as_str() {
                "sources" => empty_list("sources"),
                "subscriptions" => empty_list("subscriptions"),
                "tax_ids" => empty_list("tax_ids"),
                "tax" => json!({
                    "automatic_tax": "not_collecting",
                    "ip_address": null,
                    "location": null,
                }),
                "invoice_credit_balance" => json!({}),
                _ => Value::Null,
            };
            fields.insert(include.clone(), rendered);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `resources.customer` of the spec's fixtures3.json, with the id made
    /// the emulator's.
    fn fixture() -> Value {
        json!({
            "address": null,
            "balance": 0,
            "created": 1234567890,
            "currency": null,
            "default_source": null,
            "delinquent": false,
            "description": null,
            "discount": null,
            "email": null,
            "id": "cus_Oaxlz8kB0PJWGa",
            "invoice_prefix": "F79089B",
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null
            },
            "livemode": false,
            "metadata": {},
            "name": null,
            "next_invoice_sequence": 1,
            "object": "customer",
            "phone": null,
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null
        })
    }

    #[test]
    fn a_new_customer_renders_like_stripes_fixture() {
        // The fixture's currency is "usd"; a customer created without one
        // has null until its first invoice, so the fixture is adjusted.
        let ours = Customer {
            id: "cus_Oaxlz8kB0PJWGa".into(),
            created: 1234567890,
            invoice_prefix: Some("F79089B".into()),
            ..Customer::default()
        };
        assert_eq!(ours.render(&[]), fixture());
        let direct: Value =
            serde_json::from_slice(&serde_json::to_vec(&ours).expect("serialises")).expect("json");
        assert_eq!(direct, fixture());
    }

    #[test]
    fn id_and_object_come_first_as_in_stripes_answers() {
        let text = serde_json::to_string(&Customer::default()).expect("serialises");
        assert!(text.starts_with(r#"{"id":"","object":"customer","address":null"#), "{text}");
    }

    #[test]
    fn includable_fields_appear_only_when_expanded() {
        let customer = Customer { id: "cus_1".into(), ..Customer::default() };
        assert!(customer.render(&[]).get("sources").is_none());
        let expanded = customer.render(&["sources".into(), "tax".into()]);
        assert_eq!(expanded["sources"]["url"], "/v1/customers/cus_1/sources");
        assert_eq!(expanded["tax"]["automatic_tax"], "not_collecting");
    }
}
