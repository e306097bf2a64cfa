// Drives the unmodified npm `cryptolens` 1.0.11 SDK against a license server.
//
// Usage: node driver.js <plan.json> <out.json>
// The plan names the server URL, the RSA public key XML, product id, key and a list of
// steps; every step calls the SDK exactly as an application does (each method takes
// the server URL as its last positional argument, so every optional argument before it
// is passed). Results go to <out.json>, not stdout: the SDK itself logs to stdout.
"use strict";
const fs = require("fs");
const { Key, Helpers } = require("cryptolens");

async function step(plan, s, state) {
  const url = plan.server;
  const code = s.machineCode === "GetMachineCode()" ? Helpers.GetMachineCode() : s.machineCode;
  switch (s.op) {
    case "activate": {
      const license = await Key.Activate(
        plan.token, plan.publicKey, plan.productId, plan.key, code,
        0, s.metadata || false, s.floatingTimeInterval || 0, s.maxOverdraft || 0, url);
      state.license = license;
      return {
        ok: true,
        mids: license.ActivatedMachines.map((m) => m.Mid),
        maxNoOfMachines: license.MaxNoOfMachines,
        dataObjects: license.DataObjects,
        f: [license.F1, license.F2, license.F3, license.F4, license.F5, license.F6, license.F7, license.F8],
        notes: license.Notes,
        block: license.Block,
        trial: license.TrialActivation,
        expires: license.Expires,
        hasNotExpired: Helpers.HasNotExpired(license),
        onRightMachine: Helpers.IsOnRightMachineCustom(
          license, code, s.floatingTimeInterval > 0, (s.maxOverdraft || 0) > 0),
        saved: Helpers.SaveAsString(license),
      };
    }
    case "getkey": {
      const license = await Key.GetKey(plan.token, plan.publicKey, plan.productId, plan.key, 0, false, url);
      state.license = license;
      return { ok: true, mids: license.ActivatedMachines.map((m) => m.Mid), dataObjects: license.DataObjects };
    }
    case "deactivate": {
      const message = await Key.Deactivate(
        plan.token, plan.productId, plan.key, code, s.floating || false, null, url);
      return { ok: true, message };
    }
    case "hasFeature":
      return { ok: true, value: Helpers.HasFeature(state.license, s.feature) };
    case "loadFromString": {
      const loaded = Helpers.LoadFromString(s.publicKey || plan.publicKey, s.saved, s.days || 0);
      return { ok: true, loaded: loaded !== null, key: loaded ? loaded.Key : null };
    }
    default:
      throw new Error("unknown step " + s.op);
  }
}

async function main() {
  const plan = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const state = { license: null };
  const results = [];
  for (const s of plan.steps) {
    try {
      results.push(await step(plan, s, state));
    } catch (error) {
      results.push({ ok: false, error: String(error && error.message) });
    }
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(results));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
