"""Where Azure is touched: the Azure adapters of the ports (ADLS Gen2 / Blob lake, Cosmos DB, Service Bus,
Event Grid via a Storage queue). Each passes the same contract suite as its local twin (tests/contracts)."""
