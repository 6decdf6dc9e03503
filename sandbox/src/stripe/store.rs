//! The customers of one emulated account, indexed so that a page of a list
//! costs O(limit) however many customers there are.
//!
//! Live customers sit in a `BTreeMap` whose key sorts newest first (created
//! descending, then creation order descending), so a cursor is a range
//! start. Deleted customers keep their key in `slots`: Stripe still knows a
//! deleted customer's id, so it stays usable as a cursor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::http::StatusCode;

use super::customer::Customer;
use super::error::ApiError;
use super::params::{Cursor, ListParams};

/// Position in list order: smaller is newer.
type SortKey = u128;

fn sort_key(created: i64, seq: u64) -> SortKey {
    (SortKey::from(!created_order(created)) << 64) | SortKey::from(!seq)
}

/// `created` mapped onto `u64` keeping its order (negative times included).
fn created_order(created: i64) -> u64 {
    created.cast_unsigned() ^ (1 << 63)
}

/// The smallest key of any customer created at `created`.
fn first_key_at(created: i64) -> SortKey {
    sort_key(created, u64::MAX)
}

/// The largest key of any customer created at `created`.
fn last_key_at(created: i64) -> SortKey {
    sort_key(created, 0)
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: SortKey,
    deleted: bool,
}

/// What the store knows about an id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lookup {
    Live(Arc<Customer>),
    Deleted,
    Missing,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Page {
    pub customers: Vec<Arc<Customer>>,
    pub has_more: bool,
}

impl Page {
    fn empty() -> Self {
        Self { customers: Vec::new(), has_more: false }
    }
}

/// Customers by id, in list order, and by email.
#[derive(Debug, Default)]
pub(crate) struct CustomerStore {
    slots: HashMap<String, Slot>,
    live: BTreeMap<SortKey, Arc<Customer>>,
    by_email: HashMap<String, BTreeSet<SortKey>>,
    next_seq: u64,
}

impl CustomerStore {
    /// Number of customers not deleted.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether `id` was ever used, deleted or not.
    pub fn knows(&self, id: &str) -> bool {
        self.slots.contains_key(id)
    }

    /// Live customers, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Customer>> {
        self.live.values()
    }

    /// Adds `customer` as the newest of those created in its second,
    /// replacing any customer (live or deleted) with its id.
    pub fn insert(&mut self, customer: Customer) -> Arc<Customer> {
        if let Some(old) = self.slots.get(&customer.id).copied()
            && !old.deleted
        {
            self.unlink(old.key);
        }
        let key = sort_key(customer.created, self.next_seq);
        self.next_seq += 1;
        self.slots.insert(customer.id.clone(), Slot { key, deleted: false });
        self.link(key, Arc::new(customer))
    }

    /// The customer with `id`, if any.
    pub fn get(&self, id: &str) -> Lookup {
        match self.slots.get(id) {
            None => Lookup::Missing,
            Some(slot) if slot.deleted => Lookup::Deleted,
            Some(slot) => self
                .live
                .get(&slot.key)
                .map_or(Lookup::Missing, |customer| Lookup::Live(Arc::clone(customer))),
        }
    }

    /// Stores a changed copy of a live customer in its place. Returns
    /// `None` if the customer is not live.
    pub fn replace(&mut self, customer: Customer) -> Option<Arc<Customer>> {
        let slot = self.slots.get(&customer.id).copied()?;
        if slot.deleted {
            return None;
        }
        // The id and creation time never change, so neither does the key.
        self.unlink(slot.key);
        Some(self.link(slot.key, Arc::new(customer)))
    }

    /// Deletes a live customer; `false` if there was none to delete.
    pub fn delete(&mut self, id: &str) -> bool {
        let Some(slot) = self.slots.get_mut(id) else {
            return false;
        };
        if slot.deleted {
            return false;
        }
        slot.deleted = true;
        let key = slot.key;
        self.unlink(key);
        true
    }

    /// The page `params` asks for.
    ///
    /// # Errors
    ///
    /// `resource_missing` if a cursor names an id the account never had.
    pub fn page(&self, params: &ListParams) -> Result<Page, ApiError> {
        if params.created.min > params.created.max {
            return Ok(Page::empty());
        }
        let mut low = first_key_at(params.created.max);
        let mut high = last_key_at(params.created.min);
        let mut backwards = false;
        match &params.cursor {
            None => {}
            Some(Cursor::StartingAfter(id)) => {
                let Some(next) = self.cursor_key(id, "starting_after")?.checked_add(1) else {
                    return Ok(Page::empty());
                };
                low = low.max(next);
            }
            Some(Cursor::EndingBefore(id)) => {
                let Some(previous) = self.cursor_key(id, "ending_before")?.checked_sub(1) else {
                    return Ok(Page::empty());
                };
                high = high.min(previous);
                backwards = true;
            }
        }
        if low > high {
            return Ok(Page::empty());
        }
        Ok(match &params.email {
            None => take_page(self.live.range(low..=high).map(|(_, c)| c), backwards, params.limit),
            Some(email) => match self.by_email.get(email) {
                None => Page::empty(),
                Some(keys) => take_page(
                    keys.range(low..=high).filter_map(|key| self.live.get(key)),
                    backwards,
                    params.limit,
                ),
            },
        })
    }

    fn cursor_key(&self, id: &str, param: &str) -> Result<SortKey, ApiError> {
        self.slots
            .get(id)
            .map(|slot| slot.key)
            .ok_or_else(|| ApiError::no_such("customer", id, param, StatusCode::BAD_REQUEST))
    }

    fn link(&mut self, key: SortKey, customer: Arc<Customer>) -> Arc<Customer> {
        if let Some(email) = &customer.email {
            self.by_email.entry(email.clone()).or_default().insert(key);
        }
        self.live.insert(key, Arc::clone(&customer));
        customer
    }

    fn unlink(&mut self, key: SortKey) {
        let Some(customer) = self.live.remove(&key) else {
            return;
        };
        if let Some(email) = &customer.email
            && let Some(keys) = self.by_email.get_mut(email)
        {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_email.remove(email);
            }
        }
    }
}

/// Takes `limit` customers from the front of `customers` (from the back
/// for `ending_before`, keeping newest-first order) and whether more remain.
fn take_page<'a>(
    mut customers: impl DoubleEndedIterator<Item = &'a Arc<Customer>>,
    backwards: bool,
    limit: usize,
) -> Page {
    if backwards {
        let mut page: Vec<Arc<Customer>> = customers.by_ref().rev().take(limit).cloned().collect();
        page.reverse();
        Page { customers: page, has_more: customers.next_back().is_some() }
    } else {
        let page = customers.by_ref().take(limit).cloned().collect();
        Page { customers: page, has_more: customers.next().is_some() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::params::CreatedRange;

    fn customer(id: &str, created: i64, email: Option<&str>) -> Customer {
        Customer { id: id.into(), created, email: email.map(Into::into), ..Customer::default() }
    }

    fn list(limit: usize, cursor: Option<Cursor>) -> ListParams {
        ListParams {
            limit,
            cursor,
            email: None,
            created: CreatedRange::default(),
            expand: Vec::new(),
        }
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.customers.iter().map(|c| c.id.as_str()).collect()
    }

    /// c0..c9 created one second apart, then c10 in the same second as c9.
    fn store() -> CustomerStore {
        let mut store = CustomerStore::default();
        for i in 0..10 {
            store.insert(customer(&format!("c{i}"), 1000 + i, None));
        }
        store.insert(customer("c10", 1009, None));
        store
    }

    #[test]
    fn sort_keys_put_newer_customers_first_even_before_1970() {
        assert!(sort_key(10, 0) < sort_key(9, 5));
        assert!(sort_key(9, 6) < sort_key(9, 5));
        assert!(sort_key(0, 0) < sort_key(-1, 0));
        assert!(sort_key(i64::MAX, 0) < sort_key(i64::MIN, u64::MAX));
    }

    #[test]
    fn pages_run_newest_first_and_same_second_by_creation_order() {
        let store = store();
        let first = store.page(&list(3, None)).expect("page");
        assert_eq!(ids(&first), ["c10", "c9", "c8"]);
        assert!(first.has_more);
        let last = store.page(&list(10, Some(Cursor::StartingAfter("c3".into())))).expect("page");
        assert_eq!(ids(&last), ["c2", "c1", "c0"]);
        assert!(!last.has_more);
    }

    #[test]
    fn ending_before_returns_the_page_just_newer_than_the_cursor() {
        let store = store();
        let page = store.page(&list(2, Some(Cursor::EndingBefore("c5".into())))).expect("page");
        assert_eq!(ids(&page), ["c7", "c6"]);
        assert!(page.has_more);
        let top = store.page(&list(5, Some(Cursor::EndingBefore("c8".into())))).expect("page");
        assert_eq!(ids(&top), ["c10", "c9"]);
        assert!(!top.has_more);
    }

    #[test]
    fn deleted_customers_leave_the_list_but_still_work_as_cursors() {
        let mut store = store();
        assert!(store.delete("c5"));
        assert!(!store.delete("c5"));
        assert_eq!(store.len(), 10);
        assert_eq!(store.get("c5"), Lookup::Deleted);
        let page = store.page(&list(2, Some(Cursor::StartingAfter("c5".into())))).expect("page");
        assert_eq!(ids(&page), ["c4", "c3"]);
        let error = store
            .page(&list(2, Some(Cursor::StartingAfter("nope".into()))))
            .expect_err("unknown cursor");
        assert_eq!(error.param.as_deref(), Some("starting_after"));
    }

    #[test]
    fn email_and_created_filters_combine_with_cursors() {
        let mut store = CustomerStore::default();
        for i in 0..6 {
            let email = if i % 2 == 0 { "even@x.io" } else { "odd@x.io" };
            store.insert(customer(&format!("c{i}"), 100 + i, Some(email)));
        }
        let mut params = list(10, None);
        params.email = Some("even@x.io".into());
        assert_eq!(ids(&store.page(&params).expect("page")), ["c4", "c2", "c0"]);
        params.created = CreatedRange { min: 101, max: 103 };
        assert_eq!(ids(&store.page(&params).expect("page")), ["c2"]);
        params.email = None;
        params.cursor = Some(Cursor::StartingAfter("c3".into()));
        assert_eq!(ids(&store.page(&params).expect("page")), ["c2", "c1"]);
        params.email = Some("EVEN@x.io".into());
        assert!(store.page(&params).expect("page").customers.is_empty(), "case-sensitive");
    }

    #[test]
    fn changing_an_email_moves_the_customer_in_the_email_index() {
        let mut store = CustomerStore::default();
        store.insert(customer("c1", 1, Some("old@x.io")));
        store.replace(customer("c1", 1, Some("new@x.io"))).expect("live");
        let mut params = list(10, None);
        params.email = Some("old@x.io".into());
        assert!(store.page(&params).expect("page").customers.is_empty());
        params.email = Some("new@x.io".into());
        assert_eq!(ids(&store.page(&params).expect("page")), ["c1"]);
    }
}
