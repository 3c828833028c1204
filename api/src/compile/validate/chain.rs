//! Chain validation: step references, branch targets, and cycles (within a chain's steps
//! and across sub-chains).

use std::collections::{HashMap, HashSet};

use super::{Accepted, Parsed, Problem, Run};
use crate::compile::error::Kind;
use crate::compile::limits::MAX_DELAY_SECONDS;
use crate::crd::{ChainSpec, Parallel};

const BRANCH_OPERATORS: &[&str] = &["eq", "ne", "gt", "gte", "lt", "lte", "contains", "exists"];
const ON_FAILURE: &[&str] = &["abort", "skip", "dlq"];

pub(super) fn check(c: &Parsed<'_, ChainSpec>, accepted: &Accepted) -> Result<(), Problem> {
    let steps = &c.spec.steps;
    if steps.is_empty() {
        return Err(Problem::new(
            "spec.steps",
            "InvalidChain",
            "needs at least one step",
        ));
    }
    if let Some(t) = c.spec.timeout_seconds
        && !(1..=MAX_DELAY_SECONDS).contains(&t)
    {
        return Err(Problem::new(
            "spec.timeoutSeconds",
            "InvalidChain",
            format!("{t} is not between 1 and {MAX_DELAY_SECONDS} (7 days)"),
        ));
    }
    if let Some(step) = &c.spec.on_cancel {
        accepted.need(
            Kind::Provider,
            &c.scope,
            &step.provider,
            "spec.onCancel.provider".to_owned(),
            "ProviderNotFound",
        )?;
    }
    let mut names = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("spec.steps[{i}]");
        if !names.insert(step.name.as_str()) {
            return Err(Problem::new(
                format!("{at}.name"),
                "InvalidChain",
                format!("step name `{}` is used twice", step.name),
            ));
        }
        match (&step.provider, &step.sub_chain, &step.parallel) {
            (Some(p), None, None) => accepted.need(
                Kind::Provider,
                &c.scope,
                p,
                format!("{at}.provider"),
                "ProviderNotFound",
            )?,
            (None, Some(_), None) => {}
            (None, None, Some(parallel)) => {
                check_parallel(parallel, &format!("{at}.parallel"), c, accepted)?
            }
            _ => {
                return Err(Problem::new(
                    at,
                    "InvalidChain",
                    "a step has exactly one of `provider`, `subChain` and `parallel`",
                ));
            }
        }
        if let Some(retry) = &step.retry
            && !(1..=10).contains(&retry.max_attempts)
        {
            return Err(Problem::new(
                format!("{at}.retry.maxAttempts"),
                "InvalidChain",
                format!("{} is not between 1 and 10", retry.max_attempts),
            ));
        }
        if let Some(on_failure) = &step.on_failure
            && !ON_FAILURE.contains(&on_failure.as_str())
        {
            return Err(Problem::new(
                format!("{at}.onFailure"),
                "InvalidChain",
                format!("`{on_failure}` is not one of {}", ON_FAILURE.join(", ")),
            ));
        }
        if let Some(delay) = step.delay_seconds
            && delay > MAX_DELAY_SECONDS
        {
            return Err(Problem::new(
                format!("{at}.delaySeconds"),
                "InvalidChain",
                format!("{delay} is over {MAX_DELAY_SECONDS} (7 days)"),
            ));
        }
        for (b, branch) in step.branches.iter().enumerate() {
            if !BRANCH_OPERATORS.contains(&branch.operator.as_str()) {
                return Err(Problem::new(
                    format!("{at}.branches[{b}].operator"),
                    "InvalidChain",
                    format!(
                        "`{}` is not one of {}",
                        branch.operator,
                        BRANCH_OPERATORS.join(", ")
                    ),
                ));
            }
        }
    }
    for (i, step) in steps.iter().enumerate() {
        let targets = step
            .branches
            .iter()
            .enumerate()
            .map(|(b, br)| (format!("spec.steps[{i}].branches[{b}].target"), &br.target));
        let default = step
            .default_next
            .iter()
            .map(|t| (format!("spec.steps[{i}].defaultNext"), t));
        for (field, target) in targets.chain(default) {
            if !names.contains(target.as_str()) {
                return Err(Problem::new(
                    field,
                    "DanglingStep",
                    format!("step `{target}` does not exist in this chain"),
                ));
            }
        }
    }
    if let Some(step) = step_cycle(&c.spec) {
        return Err(Problem::new(
            "spec.steps",
            "CycleDetected",
            format!("steps loop back through `{step}`"),
        ));
    }
    Ok(())
}

/// A `parallel` step: one or more calls with distinct names and known providers, a known
/// join and failure mode.
fn check_parallel(
    parallel: &Parallel,
    at: &str,
    c: &Parsed<'_, ChainSpec>,
    accepted: &Accepted,
) -> Result<(), Problem> {
    if parallel.steps.is_empty() {
        return Err(Problem::new(
            format!("{at}.steps"),
            "InvalidChain",
            "needs at least one step",
        ));
    }
    let mut names = HashSet::new();
    for (i, step) in parallel.steps.iter().enumerate() {
        if !names.insert(step.name.as_str()) {
            return Err(Problem::new(
                format!("{at}.steps[{i}].name"),
                "InvalidChain",
                format!("step name `{}` is used twice", step.name),
            ));
        }
        accepted.need(
            Kind::Provider,
            &c.scope,
            &step.provider,
            format!("{at}.steps[{i}].provider"),
            "ProviderNotFound",
        )?;
    }
    for (field, value, allowed) in [
        ("join", &parallel.join, &["all", "any"][..]),
        (
            "onFailure",
            &parallel.on_failure,
            &["failFast", "bestEffort"][..],
        ),
    ] {
        if let Some(v) = value
            && !allowed.contains(&v.as_str())
        {
            return Err(Problem::new(
                format!("{at}.{field}"),
                "InvalidChain",
                format!("`{v}` is not one of {}", allowed.join(", ")),
            ));
        }
    }
    if let Some(t) = parallel.timeout_seconds
        && !(1..=MAX_DELAY_SECONDS).contains(&t)
    {
        return Err(Problem::new(
            format!("{at}.timeoutSeconds"),
            "InvalidChain",
            format!("{t} is not between 1 and {MAX_DELAY_SECONDS} (7 days)"),
        ));
    }
    Ok(())
}

/// Finds a step reachable from itself (branches, `defaultNext`, or falling through to the next step).
fn step_cycle(spec: &ChainSpec) -> Option<String> {
    let index: HashMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let next = |i: usize| -> Vec<usize> {
        let s = &spec.steps[i];
        let mut out: Vec<usize> = s
            .branches
            .iter()
            .filter_map(|b| index.get(b.target.as_str()).copied())
            .collect();
        match &s.default_next {
            Some(d) => out.extend(index.get(d.as_str()).copied()),
            None if i + 1 < spec.steps.len() => out.push(i + 1),
            None => {}
        }
        out
    };
    let edges: Vec<Vec<usize>> = (0..spec.steps.len()).map(next).collect();
    find_cycle(&edges).map(|i| spec.steps[i].name.clone())
}

/// Index of a node on a cycle of the directed graph, if any (iterative three-colour DFS).
fn find_cycle(edges: &[Vec<usize>]) -> Option<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        White,
        Grey,
        Black,
    }
    let mut colour = vec![Colour::White; edges.len()];
    for start in 0..edges.len() {
        if colour[start] != Colour::White {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        colour[start] = Colour::Grey;
        while let Some((node, pos)) = stack.last_mut() {
            if let Some(&next) = edges[*node].get(*pos) {
                *pos += 1;
                match colour[next] {
                    Colour::Grey => return Some(next),
                    Colour::White => {
                        colour[next] = Colour::Grey;
                        stack.push((next, 0));
                    }
                    Colour::Black => {}
                }
            } else {
                colour[*node] = Colour::Black;
                stack.pop();
            }
        }
    }
    None
}

/// Rejects chains whose sub-chains are missing or rejected, then chains on a sub-chain cycle.
pub(super) fn check_sub_chains<'d>(
    run: &mut Run<'_>,
    mut chains: Vec<Parsed<'d, ChainSpec>>,
) -> Vec<Parsed<'d, ChainSpec>> {
    reject_missing_sub_chains(run, &mut chains);
    let mut kept = reject_sub_chain_cycles(run, chains);
    // A chain that calls a chain rejected for being on a cycle has lost its sub-chain too.
    reject_missing_sub_chains(run, &mut kept);
    kept
}

/// Rejects, until none is left, chains calling a sub-chain that is missing or rejected.
fn reject_missing_sub_chains(run: &mut Run<'_>, chains: &mut Vec<Parsed<'_, ChainSpec>>) {
    loop {
        let missing = chains.iter().position(|c| {
            c.spec
                .steps
                .iter()
                .filter_map(|s| s.sub_chain.as_ref())
                .any(|sub| !run.accepted.resolves(Kind::Chain, &c.scope, sub))
        });
        let Some(i) = missing else { break };
        let c = chains.remove(i);
        let (step, sub) = c
            .spec
            .steps
            .iter()
            .enumerate()
            .find_map(|(n, s)| {
                s.sub_chain
                    .as_ref()
                    .filter(|sub| !run.accepted.resolves(Kind::Chain, &c.scope, sub))
                    .map(|sub| (n, sub.clone()))
            })
            .unwrap_or_default();
        run.accepted.remove(Kind::Chain, &c.scope, &c.doc.id.name);
        let field = format!("spec.steps[{step}].subChain");
        let problem =
            match run
                .accepted
                .need(Kind::Chain, &c.scope, &sub, field.clone(), "ChainNotFound")
            {
                Err(p) => p,
                Ok(()) => Problem::new(field, "ChainNotFound", format!("chain `{sub}` not found")),
            };
        run.reject(c.doc, problem);
    }
}

/// Rejects every chain on a sub-chain cycle.
fn reject_sub_chain_cycles<'d>(
    run: &mut Run<'_>,
    chains: Vec<Parsed<'d, ChainSpec>>,
) -> Vec<Parsed<'d, ChainSpec>> {
    // Resolve each sub-chain reference to an index (own namespace first, then shared).
    let position = |scope: &Option<String>, name: &str| {
        chains
            .iter()
            .position(|c| c.scope == *scope && c.doc.id.name == name)
            .or_else(|| {
                chains
                    .iter()
                    .position(|c| c.scope.is_none() && c.doc.id.name == name)
            })
    };
    let edges: Vec<Vec<usize>> = chains
        .iter()
        .map(|c| {
            c.spec
                .steps
                .iter()
                .filter_map(|s| s.sub_chain.as_ref())
                .filter_map(|sub| position(&c.scope, sub))
                .collect()
        })
        .collect();
    let on_cycle = nodes_on_cycles(&edges);
    let mut kept = Vec::new();
    for (i, c) in chains.into_iter().enumerate() {
        if on_cycle.contains(&i) {
            run.accepted.remove(Kind::Chain, &c.scope, &c.doc.id.name);
            run.reject(
                c.doc,
                Problem::new(
                    "spec.steps",
                    "CycleDetected",
                    "sub-chains lead back to this chain",
                ),
            );
        } else {
            kept.push(c);
        }
    }
    kept
}

/// Every node that can reach itself.
fn nodes_on_cycles(edges: &[Vec<usize>]) -> HashSet<usize> {
    (0..edges.len())
        .filter(|&start| {
            let mut seen = HashSet::new();
            let mut todo: Vec<usize> = edges[start].clone();
            while let Some(n) = todo.pop() {
                if n == start {
                    return true;
                }
                if seen.insert(n) {
                    todo.extend(&edges[n]);
                }
            }
            false
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::find_cycle;

    #[test]
    fn finds_cycles() {
        assert_eq!(find_cycle(&[vec![1], vec![2], vec![]]), None);
        assert!(find_cycle(&[vec![1], vec![2], vec![0]]).is_some());
        assert!(find_cycle(&[vec![0]]).is_some());
    }
}
