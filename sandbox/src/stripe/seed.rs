//! Demo customers: plausible, varied, and the same for the same seed.

use std::collections::BTreeMap;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::customer::{Address, Customer};

/// Demo customers are created from this instant (2023-11-14) on, a minute
/// or so apart: in the past, distinct, and in a fixed order.
const FIRST_CREATED: i64 = 1_700_000_000;

const FIRST_NAMES: [&str; 24] = [
    "Ada",
    "Grace",
    "Alan",
    "Katherine",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Dennis",
    "Frances",
    "John",
    "Radia",
    "Ken",
    "Hedy",
    "Claude",
    "Annie",
    "Tim",
    "Sophie",
    "Linus",
    "Joan",
    "Niklaus",
    "Evelyn",
    "Guido",
    "Mary",
];

const LAST_NAMES: [&str; 24] = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Johnson",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Ritchie",
    "Allen",
    "McCarthy",
    "Perlman",
    "Thompson",
    "Lamarr",
    "Shannon",
    "Easley",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Clarke",
    "Wirth",
    "Boyd",
    "van Rossum",
    "Keller",
];

/// City, country, postal code.
const PLACES: [(&str, &str, &str); 7] = [
    ("London", "GB", "EC1A 1BB"),
    ("Paris", "FR", "75001"),
    ("Berlin", "DE", "10115"),
    ("New York", "US", "10001"),
    ("Toronto", "CA", "M5H 2N2"),
    ("Sydney", "AU", "2000"),
    ("Tokyo", "JP", "100-0001"),
];

const STREETS: [&str; 5] =
    ["Market Street", "High Street", "Rue de Rivoli", "Main Street", "King Street"];

const PLANS: [&str; 4] = ["free", "starter", "pro", "enterprise"];

/// The `index`-th demo customer, without the id and invoice prefix the
/// account assigns. `index` makes the email unique and the creation time
/// later than the previous customer's.
pub(crate) fn demo_customer(index: usize, rng: &mut StdRng) -> Customer {
    let first = *FIRST_NAMES.choose(rng).unwrap_or(&"Ada");
    let last = *LAST_NAMES.choose(rng).unwrap_or(&"Lovelace");
    let number = index + 1;
    let email = format!(
        "{}.{}.{number}@example.com",
        first.to_lowercase(),
        last.to_lowercase().replace(' ', "")
    );
    let offset = i64::try_from(index).unwrap_or(i64::MAX / 120).saturating_mul(60);
    let created = FIRST_CREATED + offset + rng.random_range(0..60);

    let mut metadata = BTreeMap::new();
    if rng.random_bool(0.6) {
        let plan = *PLANS.choose(rng).unwrap_or(&"free");
        metadata.insert("plan".to_owned(), plan.to_owned());
        metadata.insert("seats".to_owned(), rng.random_range(1..=250_u32).to_string());
    }
    if rng.random_bool(0.3) {
        metadata
            .insert("crm_id".to_owned(), format!("crm_{:06}", rng.random_range(0..1_000_000_u32)));
    }

    let address = rng.random_bool(0.5).then(|| {
        let (city, country, postal_code) = *PLACES.choose(rng).unwrap_or(&PLACES[0]);
        let street = *STREETS.choose(rng).unwrap_or(&STREETS[0]);
        Address {
            city: Some(city.to_owned()),
            country: Some(country.to_owned()),
            line1: Some(format!("{} {street}", rng.random_range(1..=200_u32))),
            line2: None,
            postal_code: Some(postal_code.to_owned()),
            state: None,
        }
    });
    let phone =
        rng.random_bool(0.3).then(|| format!("+1555{:07}", rng.random_range(0..10_000_000_u32)));
    let balance =
        if rng.random_bool(0.1) { -i64::from(rng.random_range(1..=50_u32)) * 100 } else { 0 };

    Customer {
        created,
        name: Some(format!("{first} {last}")),
        email: Some(email),
        description: rng.random_bool(0.2).then(|| format!("Demo customer {number}")),
        metadata,
        address,
        phone,
        balance,
        preferred_locales: if rng.random_bool(0.2) { vec!["en".to_owned()] } else { Vec::new() },
        ..Customer::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn demo_customers_depend_only_on_the_seed() {
        let make = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|i| demo_customer(i, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(make(7), make(7));
        assert_ne!(make(7), make(8));
    }

    #[test]
    fn demo_customers_have_unique_emails_and_increasing_creation_times() {
        let mut rng = StdRng::seed_from_u64(1);
        let customers: Vec<Customer> = (0..200).map(|i| demo_customer(i, &mut rng)).collect();
        let first = &customers[16];
        let email = first.email.as_deref().expect("email");
        assert!(email.ends_with(".17@example.com"), "{email}");
        for pair in customers.windows(2) {
            assert!(pair[0].created < pair[1].created);
        }
        assert!(customers.iter().any(|c| c.address.is_some()));
        assert!(customers.iter().any(|c| !c.metadata.is_empty()));
    }
}
