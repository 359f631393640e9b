//! Slot placement: which TaskManager slots a job's tasks go to.
//!
//! "Schedulers decide, one applier commits": [`place`] computes a plan against an immutable view of the
//! TaskManagers' free slots and returns it; the ResourceManager then leases exactly those slots through Raft
//! (`LeaseSlots`), and the state machine re-checks that they are still free. Nothing here reads or changes state, so
//! two plans computed from the same view may collide; the second lease is refused and its job re-planned.
//!
//! # The request
//!
//! A job asks for one group of slots per connected component of its graph (with slot sharing, a component needs as
//! many slots as its highest parallelism). All slots of a component go to *one* TaskManager, so records between its
//! tasks never cross the network. Different components may share a TaskManager.
//!
//! # Policies
//!
//! Components are placed largest first (the hardest to fit go while there is most room); the plan lists them in
//! the request's order. A component only goes to a TaskManager with enough free slots, and takes its lowest free
//! slot indexes. Among those TaskManagers:
//!
//! * [`PlacementPolicy::Spread`] (the default) prefers the zone holding the fewest slots of this request so far,
//!   then the TaskManager with the most free slots, then the lowest id: jobs spread over zones and machines, so
//!   losing one loses as little as possible.
//! * [`PlacementPolicy::Pack`] prefers the TaskManager with the fewest free slots that still fit, then the lowest
//!   id: TaskManagers fill up one at a time, so idle ones can be stopped.
//!
//! TaskManagers in the request's `avoid` set (typically one that just failed) come last whatever the policy: they
//! are used only when nothing else fits.
//!
//! # Invariants
//!
//! * Deterministic: the same request and view give the same plan.
//! * Every slot in a plan is free in the view, no slot appears twice, and each component's slots are on one
//!   TaskManager.
//! * Complete: when the preferred choices lead to a dead end, the placement backtracks, so it succeeds whenever
//!   *some* assignment of components to TaskManagers fits. The search is bounded ([`SEARCH_BUDGET`]); beyond the
//!   bound (only conceivable with many components on very many TaskManagers of distinct sizes) it reports the
//!   preferred choices' dead end.
//!
//! # Caveats
//!
//! * The zone balance counts only this request's slots, not other jobs'; across jobs, "most free slots first"
//!   evens the load.
//! * TaskManagers without a zone count as one zone of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::raft::command::{JobId, SlotId, TaskManagerId};

/// Most search steps [`place`] takes before giving up on finding a fit its preferred choices missed.
pub const SEARCH_BUDGET: u32 = 100_000;

/// How [`place`] chooses among TaskManagers with room for a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PlacementPolicy {
    /// Balance over zones, then over TaskManagers (most free slots first).
    #[default]
    Spread,
    /// Fill the fullest TaskManager that still fits first.
    Pack,
}

impl PlacementPolicy {
    /// The policy's name, as the CLI flag takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spread => "spread",
            Self::Pack => "pack",
        }
    }
}

impl fmt::Display for PlacementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A placement policy name that is neither `spread` nor `pack`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown placement policy `{0}`; use `spread` or `pack`")]
pub struct UnknownPlacementPolicy(pub String);

impl FromStr for PlacementPolicy {
    type Err = UnknownPlacementPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "spread" => Ok(Self::Spread),
            "pack" => Ok(Self::Pack),
            _ => Err(UnknownPlacementPolicy(s.to_string())),
        }
    }
}

/// One TaskManager as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskManagerView {
    /// Its id.
    pub id: TaskManagerId,
    /// Its failure domain (e.g. an availability zone), if known.
    pub zone: Option<String>,
    /// How many slots it offers.
    pub slots: u32,
    /// Its free slot indexes, sorted ascending.
    pub free: Vec<u32>,
}

/// What a job needs placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// The job asking.
    pub job_id: JobId,
    /// Slots needed by each connected component; each component must land on one TaskManager.
    pub components: Vec<u32>,
    /// TaskManagers to use only if nothing else fits, e.g. one that just failed.
    pub avoid: BTreeSet<TaskManagerId>,
}

/// Why a request cannot be placed, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No TaskManager is registered at all.
    #[error("no TaskManager is registered; start TaskManagers for this cluster and the job will be scheduled")]
    NoTaskManagers,
    /// A component does not fit on any TaskManager (after the request's other components were placed).
    #[error(
        "component {component} needs {needed} slots on one TaskManager, but the most free on any TaskManager is \
         {largest_free_on_one_tm} ({free_total} free in total); add TaskManagers or slots (--slots), or lower the \
         parallelism"
    )]
    NotEnoughSlots {
        /// Index of the component in the request.
        component: usize,
        /// Slots it needs.
        needed: u32,
        /// The most free slots on any one TaskManager, once the request's larger components were placed.
        largest_free_on_one_tm: u32,
        /// Free slots on all TaskManagers together, at the same point.
        free_total: u32,
    },
}

/// Free slots on all TaskManagers together.
pub fn free_slot_count(tms: &[TaskManagerView]) -> u32 {
    tms.iter().map(|tm| count(&tm.free)).fold(0, u32::saturating_add)
}

/// Places each component of `request` on one TaskManager of `tms` following `policy`; returns one list of slots
/// per component, in the request's order, each with the TaskManager's lowest free indexes. See the module
/// documentation for the rules.
pub fn place(
    request: &SlotRequest,
    tms: &[TaskManagerView],
    policy: PlacementPolicy,
) -> Result<Vec<Vec<SlotId>>, PlacementError> {
    if tms.is_empty() && request.components.iter().any(|&needed| needed > 0) {
        return Err(PlacementError::NoTaskManagers);
    }
    let mut search = Search::new(request, tms, policy);
    if search.run(0) {
        return Ok(search.plan());
    }
    Err(search.first_dead_end.unwrap_or(PlacementError::NoTaskManagers))
}

/// A depth-first search over components (largest first) and TaskManagers (preferred first). Its first leaf is the
/// greedy plan; it backtracks only from a dead end.
struct Search<'a> {
    /// The request being placed.
    request: &'a SlotRequest,
    /// The view.
    tms: &'a [TaskManagerView],
    /// How candidates are ranked.
    policy: PlacementPolicy,
    /// Component indexes, largest first, ties in request order.
    order: Vec<usize>,
    /// Each TaskManager's free slot indexes not yet taken by this plan, sorted ascending.
    free: Vec<Vec<u32>>,
    /// Slots of this request placed in each zone so far.
    zone_load: BTreeMap<Option<&'a str>, u32>,
    /// Per component: the TaskManager (index into `tms`) and the slot indexes taken there.
    taken: Vec<Option<(usize, Vec<u32>)>>,
    /// Search steps left.
    budget: u32,
    /// The first component found not to fit: the greedy plan's failure, reported if the whole search fails.
    first_dead_end: Option<PlacementError>,
}

impl<'a> Search<'a> {
    fn new(request: &'a SlotRequest, tms: &'a [TaskManagerView], policy: PlacementPolicy) -> Self {
        let mut order: Vec<usize> = (0..request.components.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(request.components.get(i).copied().unwrap_or(0)), i));
        let free = tms
            .iter()
            .map(|tm| {
                // Defensive: the view promises sorted, distinct indexes; a plan must never name a slot twice.
                let mut free = tm.free.clone();
                free.sort_unstable();
                free.dedup();
                free
            })
            .collect();
        Self {
            request,
            tms,
            policy,
            order,
            free,
            zone_load: BTreeMap::new(),
            taken: vec![None; request.components.len()],
            budget: SEARCH_BUDGET,
            first_dead_end: None,
        }
    }

    /// Places the components from position `depth` of `order` on; true when all fit.
    fn run(&mut self, depth: usize) -> bool {
        let Some(&component) = self.order.get(depth) else { return true };
        let needed = self.request.components.get(component).copied().unwrap_or(0);
        if needed == 0 {
            return self.run(depth + 1);
        }
        let candidates = self.candidates(needed);
        if candidates.is_empty() {
            self.note_dead_end(component, needed);
            return false;
        }
        // Which TaskManager holds a component matters for what fits later only through its free count, so after
        // one TaskManager with `n` free slots led nowhere, another with `n` free would too.
        let mut tried = BTreeSet::new();
        for tm in candidates {
            if !tried.insert(self.free_on(tm)) {
                continue;
            }
            if self.budget == 0 {
                return false;
            }
            self.budget -= 1;
            self.take(component, tm, needed);
            if self.run(depth + 1) {
                return true;
            }
            self.give_back(component);
        }
        false
    }

    /// TaskManagers with at least `needed` free slots, most preferred first.
    fn candidates(&self, needed: u32) -> Vec<usize> {
        let mut fitting: Vec<usize> = (0..self.tms.len()).filter(|&tm| self.free_on(tm) >= needed).collect();
        fitting.sort_by(|&a, &b| self.rank(a).cmp(&self.rank(b)));
        fitting
    }

    /// The sort key of TaskManager `tm` under the policy: lower is preferred.
    fn rank(&self, tm: usize) -> (bool, u32, i64, &'a str) {
        let tms: &'a [TaskManagerView] = self.tms;
        let view = &tms[tm];
        let avoided = self.request.avoid.contains(&view.id);
        let free = i64::from(self.free_on(tm));
        match self.policy {
            PlacementPolicy::Spread => {
                let zone_load = self.zone_load.get(&view.zone.as_deref()).copied().unwrap_or(0);
                (avoided, zone_load, -free, &view.id)
            }
            PlacementPolicy::Pack => (avoided, 0, free, &view.id),
        }
    }

    /// Free slots of TaskManager `tm` not yet taken by this plan.
    fn free_on(&self, tm: usize) -> u32 {
        self.free.get(tm).map_or(0, |free| count(free))
    }

    /// Gives `component` the `needed` lowest free slots of TaskManager `tm`.
    fn take(&mut self, component: usize, tm: usize, needed: u32) {
        let Some(free) = self.free.get_mut(tm) else { return };
        let slots: Vec<u32> = free.drain(..needed as usize).collect();
        *self.zone_load.entry(self.tms[tm].zone.as_deref()).or_default() += needed;
        if let Some(entry) = self.taken.get_mut(component) {
            *entry = Some((tm, slots));
        }
    }

    /// Undoes [`Search::take`] for `component`; undone in reverse order, so the slots go back in front.
    fn give_back(&mut self, component: usize) {
        let Some((tm, mut slots)) = self.taken.get_mut(component).and_then(Option::take) else { return };
        let Some(free) = self.free.get_mut(tm) else { return };
        if let Some(load) = self.zone_load.get_mut(&self.tms[tm].zone.as_deref()) {
            *load -= count(&slots);
        }
        slots.append(free);
        *free = slots;
    }

    /// Remembers the first dead end, with the free slots as they were at that point.
    fn note_dead_end(&mut self, component: usize, needed: u32) {
        if self.first_dead_end.is_some() {
            return;
        }
        let counts = (0..self.tms.len()).map(|tm| self.free_on(tm));
        self.first_dead_end = Some(PlacementError::NotEnoughSlots {
            component,
            needed,
            largest_free_on_one_tm: counts.clone().max().unwrap_or(0),
            free_total: counts.fold(0, u32::saturating_add),
        });
    }

    /// The plan found, in the request's component order.
    fn plan(&self) -> Vec<Vec<SlotId>> {
        self.taken
            .iter()
            .map(|taken| match taken {
                Some((tm, slots)) => slots.iter().map(|&index| SlotId::new(self.tms[*tm].id.clone(), index)).collect(),
                None => Vec::new(),
            })
            .collect()
    }
}

/// The length of a slot list as a slot count.
fn count(slots: &[u32]) -> u32 {
    u32::try_from(slots.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tm(id: &str, zone: Option<&str>, slots: u32) -> TaskManagerView {
        TaskManagerView { id: id.to_string(), zone: zone.map(String::from), slots, free: (0..slots).collect() }
    }

    fn request(components: &[u32]) -> SlotRequest {
        SlotRequest { job_id: "job".to_string(), components: components.to_vec(), avoid: BTreeSet::new() }
    }

    /// Marks the plan's slots as taken in the view, as the applied `LeaseSlots` would.
    fn lease(tms: &mut [TaskManagerView], plan: &[Vec<SlotId>]) {
        for slot in plan.iter().flatten() {
            let view = tms.iter_mut().find(|tm| tm.id == slot.tm).unwrap();
            view.free.retain(|&index| index != slot.index);
        }
    }

    /// The TaskManager of each component of a plan.
    fn hosts(plan: &[Vec<SlotId>]) -> Vec<&str> {
        plan.iter().map(|slots| slots.first().map_or("-", |slot| slot.tm.as_str())).collect()
    }

    #[test]
    fn spread_balances_jobs_over_task_managers() {
        let mut tms = vec![tm("tm1", Some("a"), 4), tm("tm2", Some("b"), 4), tm("tm3", Some("c"), 4)];
        let mut placed = Vec::new();
        for _ in 0..4 {
            let plan = place(&request(&[2]), &tms, PlacementPolicy::Spread).unwrap();
            lease(&mut tms, &plan);
            placed.push(hosts(&plan)[0].to_string());
        }
        assert_eq!(placed, ["tm1", "tm2", "tm3", "tm1"]);
        assert_eq!(free_slot_count(&tms), 4);
    }

    #[test]
    fn spread_puts_every_job_in_both_zones() {
        let mut tms = vec![tm("tm1", Some("a"), 2), tm("tm2", Some("a"), 2), tm("tm3", Some("b"), 4)];
        let mut placed = Vec::new();
        for _ in 0..3 {
            let plan = place(&request(&[1, 1]), &tms, PlacementPolicy::Spread).unwrap();
            lease(&mut tms, &plan);
            placed.push(hosts(&plan).join(","));
        }
        assert_eq!(placed, ["tm3,tm1", "tm3,tm2", "tm3,tm1"]);
        assert_eq!(free_slot_count(&tms), 2);
    }

    #[test]
    fn spread_balances_a_job_over_zones() {
        let tms = vec![tm("tm1", Some("a"), 4), tm("tm2", Some("a"), 4), tm("tm3", Some("b"), 2)];
        let plan = place(&request(&[1, 1, 1]), &tms, PlacementPolicy::Spread).unwrap();
        // Zone b before the second slot in zone a, though tm2 has more free slots than tm3.
        assert_eq!(hosts(&plan), ["tm1", "tm3", "tm2"]);
        // The largest component goes first, wherever it is in the request.
        let plan = place(&request(&[1, 3]), &tms, PlacementPolicy::Spread).unwrap();
        assert_eq!(hosts(&plan), ["tm3", "tm1"]);
        assert_eq!(plan[1], vec![SlotId::new("tm1", 0), SlotId::new("tm1", 1), SlotId::new("tm1", 2)]);
    }

    #[test]
    fn pack_fills_one_task_manager_first() {
        let mut tms = vec![tm("tm1", None, 4), tm("tm2", None, 4)];
        let mut placed = Vec::new();
        for components in [[1], [2], [1], [1]] {
            let plan = place(&request(&components), &tms, PlacementPolicy::Pack).unwrap();
            lease(&mut tms, &plan);
            placed.push(hosts(&plan)[0].to_string());
        }
        assert_eq!(placed, ["tm1", "tm1", "tm1", "tm2"]);

        let tms = vec![TaskManagerView { free: vec![2, 3], ..tm("tm1", None, 4) }, tm("tm2", None, 4)];
        assert_eq!(
            place(&request(&[2]), &tms, PlacementPolicy::Pack).unwrap(),
            vec![vec![SlotId::new("tm1", 2), SlotId::new("tm1", 3)]]
        );
        assert_eq!(hosts(&place(&request(&[3]), &tms, PlacementPolicy::Pack).unwrap()), ["tm2"]);
    }

    #[test]
    fn lowest_free_indexes_first_and_never_twice() {
        let tms = vec![TaskManagerView { free: vec![1, 3, 5, 6], ..tm("tm1", None, 8) }];
        let plan = place(&request(&[2, 2]), &tms, PlacementPolicy::Spread).unwrap();
        assert_eq!(
            plan,
            vec![
                vec![SlotId::new("tm1", 1), SlotId::new("tm1", 3)],
                vec![SlotId::new("tm1", 5), SlotId::new("tm1", 6)]
            ]
        );
    }

    #[test]
    fn not_enough_slots_says_what_to_do() {
        let tms = vec![tm("tm1", None, 2), tm("tm2", None, 3)];
        let err = place(&request(&[4]), &tms, PlacementPolicy::Spread).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NotEnoughSlots { component: 0, needed: 4, largest_free_on_one_tm: 3, free_total: 5 }
        );
        assert_eq!(
            err.to_string(),
            "component 0 needs 4 slots on one TaskManager, but the most free on any TaskManager is 3 (5 free in \
             total); add TaskManagers or slots (--slots), or lower the parallelism"
        );
        // Counted after the larger components were placed.
        let tms = vec![tm("tm1", None, 4), tm("tm2", None, 2)];
        let err = place(&request(&[3, 3]), &tms, PlacementPolicy::Pack).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NotEnoughSlots { component: 1, needed: 3, largest_free_on_one_tm: 2, free_total: 3 }
        );
    }

    #[test]
    fn no_task_managers() {
        assert_eq!(place(&request(&[1]), &[], PlacementPolicy::Spread), Err(PlacementError::NoTaskManagers));
        assert!(PlacementError::NoTaskManagers.to_string().contains("start TaskManagers"));
        assert_eq!(place(&request(&[0]), &[], PlacementPolicy::Spread), Ok(vec![vec![]]));
        assert_eq!(place(&request(&[]), &[], PlacementPolicy::Pack), Ok(vec![]));
    }

    #[test]
    fn avoided_task_managers_only_when_nothing_else_fits() {
        let tms = vec![tm("bad", None, 8), tm("ok", None, 2)];
        let mut req = request(&[2]);
        req.avoid.insert("bad".to_string());
        for policy in [PlacementPolicy::Spread, PlacementPolicy::Pack] {
            assert_eq!(hosts(&place(&req, &tms, policy).unwrap()), ["ok"], "{policy}");
        }
        req.components = vec![3];
        assert_eq!(hosts(&place(&req, &tms, PlacementPolicy::Spread).unwrap()), ["bad"]);
        req.components = vec![2, 2];
        assert_eq!(hosts(&place(&req, &tms, PlacementPolicy::Spread).unwrap()), ["ok", "bad"]);
    }

    #[test]
    fn backtracks_when_the_preferred_choice_is_a_dead_end() {
        // Spread puts the 4 on tm1 (most free), leaving 1 + 4 for the 3 and the 2: no fit. The only fit is the 4
        // on tm2 and both others on tm1.
        let tms = vec![tm("tm1", None, 5), tm("tm2", None, 4)];
        let plan = place(&request(&[4, 3, 2]), &tms, PlacementPolicy::Spread).unwrap();
        assert_eq!(hosts(&plan), ["tm2", "tm1", "tm1"]);
    }

    #[test]
    fn deterministic_whatever_the_view_order() {
        let tms = vec![tm("tm1", Some("a"), 3), tm("tm2", Some("b"), 3), tm("tm3", Some("a"), 5), tm("tm4", None, 2)];
        let mut reversed = tms.clone();
        reversed.reverse();
        for policy in [PlacementPolicy::Spread, PlacementPolicy::Pack] {
            let plan = place(&request(&[2, 1, 3]), &tms, policy).unwrap();
            assert_eq!(place(&request(&[2, 1, 3]), &tms, policy).unwrap(), plan);
            assert_eq!(place(&request(&[2, 1, 3]), &reversed, policy).unwrap(), plan);
        }
    }

    #[test]
    fn policy_names() {
        assert_eq!("spread".parse::<PlacementPolicy>(), Ok(PlacementPolicy::Spread));
        assert_eq!("Pack".parse::<PlacementPolicy>(), Ok(PlacementPolicy::Pack));
        let err = "balanced".parse::<PlacementPolicy>().unwrap_err();
        assert_eq!(err.to_string(), "unknown placement policy `balanced`; use `spread` or `pack`");
        assert_eq!(PlacementPolicy::default(), PlacementPolicy::Spread);
        assert_eq!(serde_json::to_string(&PlacementPolicy::Pack).unwrap(), "\"pack\"");
        for policy in [PlacementPolicy::Spread, PlacementPolicy::Pack] {
            assert_eq!(policy.to_string().parse::<PlacementPolicy>(), Ok(policy));
        }
    }
}

#[cfg(test)]
mod properties {
    //! Property tests over small random clusters (up to 5 TaskManagers of up to 6 slots, some taken, in up to two
    //! zones) and small jobs (up to 4 components of up to 5 slots), so that brute force can say whether a fit exists.

    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        // No failure persistence: the regression files would land next to this source file.
        ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn task_managers() -> impl Strategy<Value = Vec<TaskManagerView>> {
        prop::collection::vec((0u32..=6, any::<u8>(), 0usize..3), 1..=5).prop_map(|tms| {
            tms.into_iter()
                .enumerate()
                .map(|(i, (slots, taken, zone))| TaskManagerView {
                    id: format!("tm{i}"),
                    zone: [None, Some("a".to_string()), Some("b".to_string())][zone].clone(),
                    slots,
                    free: (0..slots).filter(|index| taken & (1 << index) == 0).collect(),
                })
                .collect()
        })
    }

    fn requests() -> impl Strategy<Value = SlotRequest> {
        (prop::collection::vec(0u32..=5, 0..=4), any::<u8>()).prop_map(|(components, avoid)| SlotRequest {
            job_id: "job".to_string(),
            components,
            avoid: (0..5).filter(|i| avoid & (1 << i) != 0).map(|i| format!("tm{i}")).collect(),
        })
    }

    fn policies() -> impl Strategy<Value = PlacementPolicy> {
        prop_oneof![Just(PlacementPolicy::Spread), Just(PlacementPolicy::Pack)]
    }

    /// Whether the components from `next` on fit in `free` in some way: every assignment, tried.
    fn fits(components: &[u32], next: usize, free: &mut [u32]) -> bool {
        let Some(&needed) = components.get(next) else { return true };
        if needed == 0 {
            return fits(components, next + 1, free);
        }
        for tm in 0..free.len() {
            if free[tm] >= needed {
                free[tm] -= needed;
                let ok = fits(components, next + 1, free);
                free[tm] += needed;
                if ok {
                    return true;
                }
            }
        }
        false
    }

    /// The simplest greedy: largest component first, onto the first TaskManager with room.
    fn first_fit_fits(components: &[u32], free: &[u32]) -> bool {
        let mut free = free.to_vec();
        let mut sorted = components.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.into_iter().filter(|&needed| needed > 0).all(|needed| match free.iter_mut().find(|f| **f >= needed) {
            Some(f) => {
                *f -= needed;
                true
            }
            None => false,
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn plans_are_valid_and_found_whenever_a_fit_exists(
            tms in task_managers(),
            request in requests(),
            policy in policies(),
        ) {
            let free_counts: Vec<u32> = tms.iter().map(|tm| tm.free.len() as u32).collect();
            let exists = fits(&request.components, 0, &mut free_counts.clone());
            let result = place(&request, &tms, policy);
            prop_assert_eq!(result.is_ok(), exists, "{:?}", result);
            if first_fit_fits(&request.components, &free_counts) {
                prop_assert!(result.is_ok());
            }
            let Ok(plan) = result else { return Ok(()) };

            prop_assert_eq!(plan.len(), request.components.len());
            let mut seen = BTreeSet::new();
            for (slots, &needed) in plan.iter().zip(&request.components) {
                prop_assert_eq!(slots.len(), needed as usize);
                let hosts: BTreeSet<&str> = slots.iter().map(|slot| slot.tm.as_str()).collect();
                prop_assert!(hosts.len() <= 1, "one TaskManager per component: {:?}", slots);
                for slot in slots {
                    let view = tms.iter().find(|tm| tm.id == slot.tm).unwrap();
                    prop_assert!(view.free.contains(&slot.index), "{} is not free", slot);
                    prop_assert!(seen.insert(slot.clone()), "{} placed twice", slot);
                }
            }
            // An avoided TaskManager is used only if the component had no other TaskManager with room, even
            // ignoring the rest of the request.
            for (slots, &needed) in plan.iter().zip(&request.components) {
                if let Some(slot) = slots.first() {
                    if request.avoid.contains(&slot.tm) {
                        let elsewhere = tms.iter().any(|tm| !request.avoid.contains(&tm.id) && tm.free.len() as u32 >= needed);
                        prop_assert!(!elsewhere || request.components.iter().filter(|&&c| c > 0).count() > 1);
                    }
                }
            }

            let mut reversed = tms.clone();
            reversed.reverse();
            prop_assert_eq!(place(&request, &reversed, policy), Ok(plan));
        }
    }
}
