//! Checking the parameters of the customer endpoints against the spec and
//! turning them into changes, with Stripe's error for each mistake.

use axum::http::StatusCode;

use super::customer::{
    Address, CustomField, Customer, INCLUDABLE, InvoiceSettings, NULL_REFERENCES, RenderingOptions,
    Shipping,
};
use super::error::ApiError;
use super::form::Param;

/// Stripe's metadata limits.
const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY_CHARS: usize = 40;
const MAX_METADATA_VALUE_CHARS: usize = 500;
const MAX_CUSTOM_FIELDS: usize = 4;

/// Which endpoint the parameters were sent to; they accept different names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/customers`.
    Create,
    /// `POST /v1/customers/{customer}`.
    Update,
}

/// A change to a nullable field: `None` leaves it, `Some(None)` unsets it.
type Change<T> = Option<Option<T>>;

/// The parameters of a create or update, checked.
#[derive(Debug, Default)]
pub(crate) struct CustomerParams {
    address: Change<Address>,
    balance: Option<i64>,
    description: Change<String>,
    email: Change<String>,
    invoice_prefix: Option<String>,
    invoice_settings: Option<InvoiceSettingsChange>,
    metadata: Option<MetadataChange>,
    name: Change<String>,
    next_invoice_sequence: Option<i64>,
    phone: Change<String>,
    preferred_locales: Option<Vec<String>>,
    shipping: Change<Shipping>,
    tax_exempt: Option<String>,
    /// Includable fields to add to the answer.
    pub expand: Vec<String>,
}

#[derive(Debug, Default)]
struct InvoiceSettingsChange {
    custom_fields: Change<Vec<CustomField>>,
    default_payment_method: Change<String>,
    footer: Change<String>,
    rendering_options: Change<RenderingOptions>,
}

#[derive(Debug)]
enum MetadataChange {
    /// `metadata=`: drop every key.
    Clear,
    /// `metadata[k]=v` sets k; `metadata[k]=` unsets it.
    Merge(Vec<(String, Option<String>)>),
}

impl CustomerParams {
    /// Checks `params` as sent to `endpoint`; the first mistake is the error.
    pub fn parse(params: &[(String, Param)], endpoint: Endpoint) -> Result<Self, ApiError> {
        use Endpoint::{Create, Update};
        let mut out = Self::default();
        for (name, value) in params {
            let name = name.as_str();
            match name {
                "address" => out.address = Some(nullable_address(value, name)?),
                "balance" => out.balance = Some(integer(value, name)?),
                "description" => out.description = Some(nullable_string(value, name, 5000)?),
                "email" => out.email = Some(email(value, name)?),
                "expand" => out.expand = expand(value, name, "")?,
                "invoice_prefix" => out.invoice_prefix = Some(invoice_prefix(value, name)?),
                "invoice_settings" => out.invoice_settings = Some(invoice_settings(value, name)?),
                "metadata" => out.metadata = Some(metadata(value, name)?),
                "name" => out.name = Some(nullable_string(value, name, 256)?),
                "next_invoice_sequence" => {
                    let sequence = integer(value, name)?;
                    if sequence < 1 {
                        return Err(ApiError::invalid_param(
                            name,
                            "This value must be greater than or equal to 1.",
                        ));
                    }
                    out.next_invoice_sequence = Some(sequence);
                }
                "phone" => out.phone = Some(nullable_string(value, name, 20)?),
                "preferred_locales" => out.preferred_locales = Some(string_list(value, name)?),
                "shipping" => out.shipping = Some(nullable_shipping(value, name)?),
                "tax_exempt" => out.tax_exempt = Some(tax_exempt(value, name)?),
                // Accepted and checked, but they only show in includable
                // fields the emulator renders empty.
                "tax" => check_tax(value, name)?,
                "cash_balance" => check_cash_balance(value, name)?,
                // References to objects the emulator has none of, so any id
                // is missing, as it would be in a fresh Stripe account.
                "coupon" => missing_reference(value, name, "coupon")?,
                "promotion_code" => missing_reference(value, name, "promotion code")?,
                "source" => missing_reference(value, name, "source")?,
                "payment_method" if endpoint == Create => {
                    missing_reference(value, name, "PaymentMethod")?;
                }
                "test_clock" if endpoint == Create => missing_reference(value, name, "test clock")?,
                "tax_id_data" if endpoint == Create => {
                    return Err(ApiError::invalid_param(
                        name,
                        "The weft sandbox does not emulate tax ids; leave out tax_id_data.",
                    ));
                }
                "default_source"
                | "default_card"
                | "default_bank_account"
                | "default_alipay_account"
                | "card"
                | "bank_account"
                    if endpoint == Update =>
                {
                    missing_reference(value, name, "source")?;
                }
                _ => return Err(ApiError::unknown_parameter(name)),
            }
        }
        Ok(out)
    }

    /// Applies the change to `customer`. On error `customer` may be half
    /// changed, so apply to a copy.
    pub fn apply(self, customer: &mut Customer) -> Result<(), ApiError> {
        if let Some(change) = self.metadata {
            match change {
                MetadataChange::Clear => customer.metadata.clear(),
                MetadataChange::Merge(entries) => {
                    for (key, value) in entries {
                        match value {
                            Some(value) => customer.metadata.insert(key, value),
                            None => customer.metadata.remove(&key),
                        };
                    }
                }
            }
            if customer.metadata.len() > MAX_METADATA_KEYS {
                return Err(ApiError::invalid_param(
                    "metadata",
                    format!(
                        "Invalid metadata: metadata can have up to {MAX_METADATA_KEYS} keys, \
                         but this change would leave {}.",
                        customer.metadata.len()
                    ),
                ));
            }
        }
        set(&mut customer.address, self.address);
        set(&mut customer.description, self.description);
        set(&mut customer.email, self.email);
        set(&mut customer.name, self.name);
        set(&mut customer.phone, self.phone);
        set(&mut customer.shipping, self.shipping);
        if let Some(balance) = self.balance {
            customer.balance = balance;
        }
        if let Some(prefix) = self.invoice_prefix {
            customer.invoice_prefix = Some(prefix);
        }
        if let Some(sequence) = self.next_invoice_sequence {
            customer.next_invoice_sequence = sequence;
        }
        if let Some(locales) = self.preferred_locales {
            customer.preferred_locales = locales;
        }
        if let Some(tax_exempt) = self.tax_exempt {
            customer.tax_exempt = Some(tax_exempt);
        }
        if let Some(change) = self.invoice_settings {
            // Unlike address and shipping, which are replaced whole, invoice
            // settings merge: setting a footer keeps the payment method.
            let settings: &mut InvoiceSettings = &mut customer.invoice_settings;
            set(&mut settings.custom_fields, change.custom_fields);
            set(&mut settings.default_payment_method, change.default_payment_method);
            set(&mut settings.footer, change.footer);
            set(&mut settings.rendering_options, change.rendering_options);
        }
        Ok(())
    }
}

fn set<T>(field: &mut Option<T>, change: Change<T>) {
    if let Some(value) = change {
        *field = value;
    }
}

/// Which customers `GET /v1/customers` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListParams {
    pub limit: usize,
    pub cursor: Option<Cursor>,
    pub email: Option<String>,
    pub created: CreatedRange,
    /// Includable fields to add to each customer.
    pub expand: Vec<String>,
}

/// Where a page starts, by customer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// The page after this customer (older customers).
    StartingAfter(String),
    /// The page before this customer (newer customers).
    EndingBefore(String),
}

/// `created` bounds, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CreatedRange {
    pub min: i64,
    pub max: i64,
}

impl Default for CreatedRange {
    fn default() -> Self {
        Self { min: i64::MIN, max: i64::MAX }
    }
}

impl ListParams {
    /// Checks the query parameters of a list request.
    pub fn parse(params: &[(String, Param)]) -> Result<Self, ApiError> {
        let mut limit = 10;
        let mut starting_after = None;
        let mut ending_before = None;
        let mut email = None;
        let mut created = CreatedRange::default();
        let mut expand_fields = Vec::new();
        for (name, value) in params {
            let name = name.as_str();
            match name {
                "limit" => {
                    let requested = integer(value, name)?;
                    if requested < 1 {
                        return Err(ApiError::invalid_param(
                            name,
                            "This value must be greater than or equal to 1.",
                        ));
                    }
                    if requested > 100 {
                        return Err(ApiError::invalid_param(
                            name,
                            "This value must be less than or equal to 100.",
                        ));
                    }
                    limit = usize::try_from(requested).unwrap_or(100);
                }
                "starting_after" => starting_after = non_empty(string(value, name, 5000)?),
                "ending_before" => ending_before = non_empty(string(value, name, 5000)?),
                "email" => email = non_empty(string(value, name, 512)?),
                "created" => created = created_range(value, name)?,
                "expand" => expand_fields = expand(value, name, "data.")?,
                "test_clock" => {
                    let id = string(value, name, 5000)?;
                    return Err(ApiError::no_such(
                        "test clock",
                        &id,
                        name,
                        StatusCode::BAD_REQUEST,
                    ));
                }
                _ => return Err(ApiError::unknown_parameter(name)),
            }
        }
        let cursor = match (starting_after, ending_before) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_request(
                    "You may only specify one of these parameters: ending_before, starting_after.",
                ));
            }
            (Some(id), None) => Some(Cursor::StartingAfter(id)),
            (None, Some(id)) => Some(Cursor::EndingBefore(id)),
            (None, None) => None,
        };
        Ok(Self { limit, cursor, email, created, expand: expand_fields })
    }
}

/// Checks that a request to an endpoint without parameters (retrieve,
/// delete) has none but `expand`, which it returns.
pub(crate) fn expand_only(
    params: &[(String, Param)],
    allow_expand: bool,
) -> Result<Vec<String>, ApiError> {
    let mut fields = Vec::new();
    for (name, value) in params {
        if name == "expand" && allow_expand {
            fields = expand(value, name, "")?;
        } else {
            return Err(ApiError::unknown_parameter(name));
        }
    }
    Ok(fields)
}

fn created_range(value: &Param, name: &str) -> Result<CreatedRange, ApiError> {
    let mut range = CreatedRange::default();
    let Param::Hash(entries) = value else {
        let at = integer(value, name)?;
        return Ok(CreatedRange { min: at, max: at });
    };
    let mut empty = false;
    for (key, value) in entries {
        let param = child(name, key);
        let bound = integer(value, &param)?;
        match key.as_str() {
            "gt" => match bound.checked_add(1) {
                Some(min) => range.min = range.min.max(min),
                None => empty = true,
            },
            "gte" => range.min = range.min.max(bound),
            "lt" => match bound.checked_sub(1) {
                Some(max) => range.max = range.max.min(max),
                None => empty = true,
            },
            "lte" => range.max = range.max.min(bound),
            _ => return Err(ApiError::unknown_parameter(&param)),
        }
    }
    if empty {
        // min > max: nothing matches.
        range = CreatedRange { min: i64::MAX, max: i64::MIN };
    }
    Ok(range)
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn child(parent: &str, key: &str) -> String {
    format!("{parent}[{key}]")
}

fn scalar<'a>(value: &'a Param, name: &str) -> Result<&'a str, ApiError> {
    match value {
        Param::Value(text) => Ok(text),
        Param::Hash(_) => Err(ApiError::invalid_param(
            name,
            format!("Invalid {name}: expected a string, not a hash"),
        )),
    }
}

fn string(value: &Param, name: &str, max_chars: usize) -> Result<String, ApiError> {
    let text = scalar(value, name)?;
    if text.chars().count() > max_chars {
        return Err(ApiError::invalid_param(
            name,
            format!("Invalid {name}: must be at most {max_chars} characters"),
        ));
    }
    Ok(text.to_owned())
}

/// A string where the empty string means "unset".
fn nullable_string(
    value: &Param,
    name: &str,
    max_chars: usize,
) -> Result<Option<String>, ApiError> {
    string(value, name, max_chars).map(non_empty)
}

fn integer(value: &Param, name: &str) -> Result<i64, ApiError> {
    let text = scalar(value, name)?;
    text.trim().parse().map_err(|_| ApiError::invalid_integer(name, text))
}

fn hash<'a>(value: &'a Param, name: &str) -> Result<&'a [(String, Param)], ApiError> {
    match value {
        Param::Hash(entries) => Ok(entries),
        Param::Value(_) => Err(ApiError::invalid_param(name, "Invalid hash")),
    }
}

fn one_of(value: &Param, name: &str, allowed: &[&str]) -> Result<String, ApiError> {
    let text = scalar(value, name)?;
    if allowed.contains(&text) {
        return Ok(text.to_owned());
    }
    let listed = match allowed.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{}, or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(ApiError::invalid_param(name, format!("Invalid {name}: must be one of {listed}")))
}

fn email(value: &Param, name: &str) -> Result<Option<String>, ApiError> {
    let Some(address) = nullable_string(value, name, 512)? else {
        return Ok(None);
    };
    // Stripe checks the shape only; uniqueness is not enforced.
    let well_formed = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.contains('@')
    }) && !address.chars().any(char::is_whitespace);
    if !well_formed {
        return Err(ApiError::invalid_param(name, format!("Invalid email address: {address}"))
            .with_code("email_invalid"));
    }
    Ok(Some(address))
}

fn invoice_prefix(value: &Param, name: &str) -> Result<String, ApiError> {
    let prefix = scalar(value, name)?;
    let valid = (3..=12).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !valid {
        return Err(ApiError::invalid_param(
            name,
            format!(
                "Invalid invoice_prefix: must be 3 to 12 uppercase letters or numbers, got '{prefix}'"
            ),
        ));
    }
    Ok(prefix.to_owned())
}

fn tax_exempt(value: &Param, name: &str) -> Result<String, ApiError> {
    let choice = one_of(value, name, &["", "exempt", "none", "reverse"])?;
    // The empty string resets the exemption.
    Ok(if choice.is_empty() { "none".to_owned() } else { choice })
}

fn metadata(value: &Param, name: &str) -> Result<MetadataChange, ApiError> {
    let entries = match value {
        Param::Value(text) if text.is_empty() => return Ok(MetadataChange::Clear),
        Param::Value(_) => {
            return Err(ApiError::invalid_param(
                name,
                "Invalid metadata: must be a hash of string keys and values, or an empty string \
                 to unset every key",
            ));
        }
        Param::Hash(entries) => entries,
    };
    let mut changes = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let param = child(name, key);
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(ApiError::invalid_param(
                &param,
                format!(
                    "Metadata keys can be at most {MAX_METADATA_KEY_CHARS} characters long: {key}"
                ),
            ));
        }
        let Param::Value(text) = value else {
            return Err(ApiError::invalid_param(
                &param,
                format!("Invalid {param}: metadata values must be strings"),
            ));
        };
        if text.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(ApiError::invalid_param(
                &param,
                format!(
                    "Metadata values can be at most {MAX_METADATA_VALUE_CHARS} characters long"
                ),
            ));
        }
        changes.push((key.clone(), non_empty(text.clone())));
    }
    if changes.len() > MAX_METADATA_KEYS {
        return Err(ApiError::invalid_param(
            name,
            format!(
                "Invalid metadata: metadata can have up to {MAX_METADATA_KEYS} keys, but you \
                 passed in {} keys.",
                changes.len()
            ),
        ));
    }
    Ok(MetadataChange::Merge(changes))
}

fn address(value: &Param, name: &str) -> Result<Address, ApiError> {
    let mut address = Address::default();
    for (key, value) in hash(value, name)? {
        let param = child(name, key);
        let field = match key.as_str() {
            "city" => &mut address.city,
            "country" => &mut address.country,
            "line1" => &mut address.line1,
            "line2" => &mut address.line2,
            "postal_code" => &mut address.postal_code,
            "state" => &mut address.state,
            _ => return Err(ApiError::unknown_parameter(&param)),
        };
        *field = nullable_string(value, &param, 5000)?;
    }
    Ok(address)
}

/// An address, or `""` to unset it. A new address replaces the old one
/// whole: fields not sent become null.
fn nullable_address(value: &Param, name: &str) -> Result<Option<Address>, ApiError> {
    match value {
        Param::Value(text) if text.is_empty() => Ok(None),
        _ => address(value, name).map(Some),
    }
}

fn nullable_shipping(value: &Param, name: &str) -> Result<Option<Shipping>, ApiError> {
    if matches!(value, Param::Value(text) if text.is_empty()) {
        return Ok(None);
    }
    let mut shipping_address = None;
    let mut recipient = None;
    let mut phone = None;
    for (key, value) in hash(value, name)? {
        let param = child(name, key);
        match key.as_str() {
            "address" => shipping_address = Some(address(value, &param)?),
            "name" => recipient = Some(string(value, &param, 5000)?),
            "phone" => phone = nullable_string(value, &param, 5000)?,
            _ => return Err(ApiError::unknown_parameter(&param)),
        }
    }
    // The spec's `customer_shipping` requires both.
    let Some(shipping_address) = shipping_address else {
        return Err(ApiError::missing_parameter(&child(name, "address")));
    };
    let Some(recipient) = recipient.and_then(non_empty) else {
        return Err(ApiError::missing_parameter(&child(name, "name")));
    };
    Ok(Some(Shipping { address: shipping_address, name: Some(recipient), phone }))
}

fn list<'a>(value: &'a Param, name: &str) -> Result<Vec<&'a Param>, ApiError> {
    match value {
        Param::Value(text) if text.is_empty() => Ok(Vec::new()),
        Param::Value(_) => Err(ApiError::invalid_param(name, "Invalid array")),
        Param::Hash(_) => {
            value.as_list().ok_or_else(|| ApiError::invalid_param(name, "Invalid array"))
        }
    }
}

fn string_list(value: &Param, name: &str) -> Result<Vec<String>, ApiError> {
    list(value, name)?
        .into_iter()
        .enumerate()
        .map(|(index, item)| string(item, &child(name, &index.to_string()), 5000))
        .collect()
}

/// Checks `expand[]` values. `prefix` is `"data."` on lists, whose
/// expansions name fields of each element. Returns the includable fields.
fn expand(value: &Param, name: &str, prefix: &str) -> Result<Vec<String>, ApiError> {
    let mut includes = Vec::new();
    for path in string_list(value, name)? {
        let Some(field) = path.strip_prefix(prefix) else {
            return Err(ApiError::invalid_request(format!(
                "This property cannot be expanded ({path}). You may want to try expanding \
                 '{prefix}{path}' instead."
            )));
        };
        if INCLUDABLE.contains(&field) {
            if !includes.iter().any(|included| included == field) {
                includes.push(field.to_owned());
            }
        } else if !NULL_REFERENCES.contains(&field) {
            return Err(ApiError::invalid_request(format!(
                "This property cannot be expanded ({path})."
            )));
        }
    }
    Ok(includes)
}

fn invoice_settings(value: &Param, name: &str) -> Result<InvoiceSettingsChange, ApiError> {
    let mut change = InvoiceSettingsChange::default();
    for (key, value) in hash(value, name)? {
        let param = child(name, key);
        match key.as_str() {
            "custom_fields" => change.custom_fields = Some(custom_fields(value, &param)?),
            "default_payment_method" => {
                if let Some(id) = nullable_string(value, &param, 5000)? {
                    return Err(ApiError::no_such(
                        "PaymentMethod",
                        &id,
                        &param,
                        StatusCode::BAD_REQUEST,
                    ));
                }
                change.default_payment_method = Some(None);
            }
            "footer" => change.footer = Some(nullable_string(value, &param, 5000)?),
            "rendering_options" => {
                change.rendering_options = Some(match value {
                    Param::Value(text) if text.is_empty() => None,
                    _ => {
                        let mut options = RenderingOptions::default();
                        for (key, value) in hash(value, &param)? {
                            let param = child(&param, key);
                            if key != "amount_tax_display" {
                                return Err(ApiError::unknown_parameter(&param));
                            }
                            let display = one_of(
                                value,
                                &param,
                                &["", "exclude_tax", "include_inclusive_tax"],
                            )?;
                            options.amount_tax_display = non_empty(display);
                        }
                        Some(options)
                    }
                });
            }
            _ => return Err(ApiError::unknown_parameter(&param)),
        }
    }
    Ok(change)
}

fn custom_fields(value: &Param, name: &str) -> Result<Option<Vec<CustomField>>, ApiError> {
    let items = list(value, name)?;
    if items.is_empty() {
        return Ok(None);
    }
    if items.len() > MAX_CUSTOM_FIELDS {
        return Err(ApiError::invalid_param(
            name,
            format!("Invalid {name}: at most {MAX_CUSTOM_FIELDS} custom fields are allowed"),
        ));
    }
    let mut fields = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let item_name = child(name, &index.to_string());
        let mut field_name = None;
        let mut field_value = None;
        for (key, value) in hash(item, &item_name)? {
            let param = child(&item_name, key);
            match key.as_str() {
                "name" => field_name = Some(string(value, &param, 30)?),
                "value" => field_value = Some(string(value, &param, 30)?),
                _ => return Err(ApiError::unknown_parameter(&param)),
            }
        }
        let Some(field_name) = field_name else {
            return Err(ApiError::missing_parameter(&child(&item_name, "name")));
        };
        let Some(field_value) = field_value else {
            return Err(ApiError::missing_parameter(&child(&item_name, "value")));
        };
        fields.push(CustomField { name: field_name, value: field_value });
    }
    Ok(Some(fields))
}

fn check_tax(value: &Param, name: &str) -> Result<(), ApiError> {
    for (key, value) in hash(value, name)? {
        let param = child(name, key);
        if key != "ip_address" {
            return Err(ApiError::unknown_parameter(&param));
        }
        string(value, &param, 5000)?;
    }
    Ok(())
}

fn check_cash_balance(value: &Param, name: &str) -> Result<(), ApiError> {
    for (key, value) in hash(value, name)? {
        let param = child(name, key);
        if key != "settings" {
            return Err(ApiError::unknown_parameter(&param));
        }
        for (key, value) in hash(value, &param)? {
            let param = child(&param, key);
            if key != "reconciliation_mode" {
                return Err(ApiError::unknown_parameter(&param));
            }
            one_of(value, &param, &["automatic", "manual", "merchant_default"])?;
        }
    }
    Ok(())
}

/// A parameter naming another object: the emulator has none, so any id is
/// `resource_missing` (400, as for every parameter that names a missing
/// object); `""` is a no-op.
fn missing_reference(value: &Param, name: &str, noun: &str) -> Result<(), ApiError> {
    match value {
        Param::Value(id) if id.is_empty() => Ok(()),
        Param::Value(id) => Err(ApiError::no_such(noun, id, name, StatusCode::BAD_REQUEST)),
        Param::Hash(_) => Err(ApiError::invalid_param(
            name,
            format!("The weft sandbox does not emulate {noun} objects; leave out {name}."),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::form::Form;

    fn create(body: &str) -> Result<Customer, ApiError> {
        let form = Form::from_bytes(body.as_bytes())?;
        let mut customer = Customer::default();
        CustomerParams::parse(&form.params, Endpoint::Create)?.apply(&mut customer)?;
        Ok(customer)
    }

    fn update(customer: &mut Customer, body: &str) -> Result<(), ApiError> {
        let form = Form::from_bytes(body.as_bytes())?;
        CustomerParams::parse(&form.params, Endpoint::Update)?.apply(customer)
    }

    fn list(query: &str) -> Result<ListParams, ApiError> {
        ListParams::parse(&Form::from_bytes(query.as_bytes())?.params)
    }

    #[test]
    fn create_parameters_fill_the_customer() {
        let customer = create(
            "email=ada%40example.com&name=Ada&phone=%2B441234&description=first&balance=-500\
             &metadata[plan]=pro&address[line1]=1+Main+St&address[country]=GB\
             &shipping[name]=Ada&shipping[address][city]=London&preferred_locales[0]=en\
             &preferred_locales[1]=fr&invoice_prefix=ADA1&tax_exempt=reverse\
             &invoice_settings[footer]=thanks",
        )
        .expect("valid");
        assert_eq!(customer.email.as_deref(), Some("ada@example.com"));
        assert_eq!(customer.name.as_deref(), Some("Ada"));
        assert_eq!(customer.phone.as_deref(), Some("+441234"));
        assert_eq!(customer.balance, -500);
        assert_eq!(customer.metadata.get("plan").map(String::as_str), Some("pro"));
        let address = customer.address.expect("address set");
        assert_eq!(address.line1.as_deref(), Some("1 Main St"));
        assert_eq!(address.city, None);
        let shipping = customer.shipping.expect("shipping set");
        assert_eq!(shipping.address.city.as_deref(), Some("London"));
        assert_eq!(customer.preferred_locales, ["en", "fr"]);
        assert_eq!(customer.invoice_prefix.as_deref(), Some("ADA1"));
        assert_eq!(customer.tax_exempt.as_deref(), Some("reverse"));
        assert_eq!(customer.invoice_settings.footer.as_deref(), Some("thanks"));
    }

    #[test]
    fn unknown_parameters_are_named_with_their_brackets() {
        assert_eq!(create("foo=1").expect_err("unknown").param.as_deref(), Some("foo"));
        let error = create("address[planet]=Mars").expect_err("unknown");
        assert_eq!(error.message, "Received unknown parameter: address[planet]");
        // `default_source` exists on update only.
        assert_eq!(
            create("default_source=src_1").expect_err("unknown").param.as_deref(),
            Some("default_source")
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        let error = create("balance=lots").expect_err("not an integer");
        assert_eq!(
            (error.param.as_deref(), error.message.as_str()),
            (Some("balance"), "Invalid integer: lots")
        );
        assert_eq!(create("email=nope").expect_err("bad email").code, Some("email_invalid"));
        assert_eq!(
            create("tax_exempt=maybe").expect_err("bad enum").param.as_deref(),
            Some("tax_exempt")
        );
        assert_eq!(
            create("invoice_prefix=ab").expect_err("bad prefix").param.as_deref(),
            Some("invoice_prefix")
        );
        assert_eq!(
            create("phone=123456789012345678901").expect_err("too long").param.as_deref(),
            Some("phone")
        );
        assert_eq!(
            create("shipping[address][city]=Paris").expect_err("no name").param.as_deref(),
            Some("shipping[name]")
        );
        let error = create("coupon=SUMMER").expect_err("no coupons");
        assert_eq!((error.status, error.code), (StatusCode::BAD_REQUEST, Some("resource_missing")));
    }

    #[test]
    fn metadata_merges_key_by_key_and_empty_values_unset() {
        let mut customer = create("metadata[a]=1&metadata[b]=2").expect("valid");
        update(&mut customer, "metadata[b]=&metadata[c]=3").expect("valid");
        let keys: Vec<(&str, &str)> =
            customer.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(keys, [("a", "1"), ("c", "3")]);
        update(&mut customer, "metadata=").expect("valid");
        assert!(customer.metadata.is_empty());
    }

    #[test]
    fn metadata_limits_are_enforced() {
        let too_long_key = format!("metadata[{}]=1", "k".repeat(41));
        assert!(create(&too_long_key).is_err());
        let too_long_value = format!("metadata[k]={}", "v".repeat(501));
        assert!(create(&too_long_value).is_err());
        let fifty: String = (0..50).map(|i| format!("metadata[k{i}]=v&")).collect();
        let mut customer = create(&fifty).expect("fifty keys fit");
        assert!(update(&mut customer, "metadata[one_more]=v").is_err());
    }

    #[test]
    fn empty_strings_unset_nullable_fields() {
        let mut customer = create("email=a%40b.c&name=A&address[city]=X").expect("valid");
        update(&mut customer, "email=&name=&address=").expect("valid");
        assert_eq!((customer.email, customer.name, customer.address), (None, None, None));
    }

    #[test]
    fn a_new_address_replaces_the_old_one_whole() {
        let mut customer = create("address[city]=Paris&address[country]=FR").expect("valid");
        update(&mut customer, "address[line1]=1+Rue").expect("valid");
        let address = customer.address.expect("set");
        assert_eq!((address.line1.as_deref(), address.city), (Some("1 Rue"), None));
    }

    #[test]
    fn list_limit_must_be_between_1_and_100() {
        assert_eq!(list("").expect("defaults").limit, 10);
        assert_eq!(list("limit=100").expect("max").limit, 100);
        for bad in ["limit=0", "limit=101", "limit=ten"] {
            assert_eq!(list(bad).expect_err(bad).param.as_deref(), Some("limit"), "{bad}");
        }
    }

    #[test]
    fn list_accepts_created_as_a_range_or_an_instant() {
        let range = list("created[gt]=10&created[lte]=20").expect("valid").created;
        assert_eq!((range.min, range.max), (11, 20));
        let exact = list("created=15").expect("valid").created;
        assert_eq!((exact.min, exact.max), (15, 15));
        assert!(list("created[after]=1").is_err());
    }

    #[test]
    fn list_refuses_both_cursors_and_unknown_parameters() {
        assert!(list("starting_after=cus_a&ending_before=cus_b").is_err());
        assert_eq!(list("sort=asc").expect_err("unknown").param.as_deref(), Some("sort"));
    }

    #[test]
    fn expansions_must_name_expandable_fields() {
        assert_eq!(list("expand[]=data.sources").expect("valid").expand, ["sources"]);
        assert!(list("expand[]=sources").is_err(), "lists expand data.*");
        assert!(create("expand[]=email").is_err());
    }
}
