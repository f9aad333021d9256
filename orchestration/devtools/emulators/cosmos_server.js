// Starts @vercel/cosmosdb-server (a Cosmos DB API server for tests and the `emulated` profile) with
// keep-alive connections: its bundled CLI closes the connection after every response (~30 ms per call
// with azure-cosmos), the library's own server with keepAlive answers in ~2 ms.
//   NODE_PATH=<tools>/node_modules node cosmos_server.js PORT [HOST]
"use strict";
const { createHttpsServer } = require("@vercel/cosmosdb-server");

const port = parseInt(process.argv[2], 10);
const host = process.argv[3] || "127.0.0.1";
if (!port) {
  console.error("usage: node cosmos_server.js PORT [HOST]");
  process.exit(2);
}
const server = createHttpsServer({ keepAlive: true }).listen(port, host, () => {
  console.log(`cosmosdb-server ready at https://${host}:${port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
