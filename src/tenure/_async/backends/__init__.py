"""Backend drivers, one module each; ``base`` defines the protocol they implement."""
