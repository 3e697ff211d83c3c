//! Store maintenance commands: `store copy` between engines and `store backup`.
