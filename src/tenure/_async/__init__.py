"""The asyncio implementation; ``tenure._sync`` is generated from it."""
