// Starts @vercel/cosmosdb-server (a Cosmos DB API server for tests and the `emulated` profile) with
// keep-alive connections: its bundled CLI closes the connection after every response (~30 ms per call
// with azure-cosmos), the library's own server with keepAlive answers in ~2 ms.
//   NODE_PATH=<tools>/node_modules node cosmos_server.js PORT [HOST]
//
// One rule of the real service it gets wrong is put right here, before its routes load: a point read of an
// item that does not exist (in a partition that has no items) answers HTTP 500 (a TypeError in
// lib/handler/read-document.js) where Cosmos DB answers 404 NotFound.
"use strict";
const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
const serverRead = readDocument.default;
readDocument.default = (account, req, res, params) => {
  try {
    return serverRead(account, req, res, params);
  } catch (error) {
    if (!(error instanceof TypeError)) throw error;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system.," };
  }
};
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
