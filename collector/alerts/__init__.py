"""Alert rules over the fleet state, their lifecycle, and the notifiers that reach people."""
