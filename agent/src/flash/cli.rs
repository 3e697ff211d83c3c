//! `hostplane-agent flash`: flash one DPU by hand.
