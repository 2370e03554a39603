//! Strongly connected components of the unreachable part of the heap graph,
//! by an iterative Tarjan (explicit call stack of (node, edge cursor), so a
//! chain of millions of leaked blocks cannot overflow the thread's stack).
//!
//! Edges from unreachable blocks to reachable ones are ignored: they cannot
//! close a cycle among unreachable blocks.

use super::heap::{HeapGraph, NodeId, NONE};
use super::node_set::NodeSet;

pub(crate) struct Components {
    /// Component of every unreachable node; `NONE` for reachable nodes.
    /// Components are numbered in completion order, which is a reverse
    /// topological order: a component's successors have smaller numbers.
    pub of_node: Vec<u32>,
    pub count: u32,
}

pub(crate) fn unreachable_components(graph: &HeapGraph, reachable: &NodeSet) -> Components {
    let n = graph.node_count();
    let row_start = graph.row_start();
    let targets = graph.all_targets();
    // `index` doubles as the visited mark; `of_node` is NONE while a node is
    // on the Tarjan stack, which is the on-stack test.
    let mut index = vec![NONE; n];
    let mut low = vec![NONE; n];
    let mut of_node = vec![NONE; n];
    let mut tarjan_stack: Vec<NodeId> = Vec::new();
    let mut calls: Vec<(NodeId, u32)> = Vec::new();
    let mut counter = 0u32;
    let mut count = 0u32;

    for start in 0..n as NodeId {
        if reachable.contains(start) || index[start as usize] != NONE {
            continue;
        }
        index[start as usize] = counter;
        low[start as usize] = counter;
        counter += 1;
        tarjan_stack.push(start);
        calls.push((start, row_start[start as usize]));
        while let Some(frame) = calls.last_mut() {
            let (v, cursor) = *frame;
            if cursor < row_start[v as usize + 1] {
                frame.1 += 1;
                let w = targets[cursor as usize];
                if reachable.contains(w) {
                    continue;
                }
                if index[w as usize] == NONE {
                    index[w as usize] = counter;
                    low[w as usize] = counter;
                    counter += 1;
                    tarjan_stack.push(w);
                    calls.push((w, row_start[w as usize]));
                } else if of_node[w as usize] == NONE {
                    low[v as usize] = low[v as usize].min(index[w as usize]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(p, _)) = calls.last() {
                low[p as usize] = low[p as usize].min(low[v as usize]);
            }
            if low[v as usize] == index[v as usize] {
                loop {
                    let x = tarjan_stack.pop().expect("v is on the Tarjan stack");
                    of_node[x as usize] = count;
                    if x == v {
                        break;
                    }
                }
                count += 1;
            }
        }
    }
    Components { of_node, count }
}
