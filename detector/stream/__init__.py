"""Everything between a decoded point and an alert: state tables, the scoring kernel."""
