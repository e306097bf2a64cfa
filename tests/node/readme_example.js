// The "Key Verification" example of the npm `cryptolens` 1.0.11 README, unchanged except
// that the placeholders come from the environment and, because the SDK takes the server
// URL as the last positional argument of Key.Activate, the optional arguments before it
// are spelled out with their defaults and the URL of the local server is passed last.
const key = require('cryptolens').Key;
const Helpers = require('cryptolens').Helpers;

var RSAPubKey = process.env.RSA_PUB_KEY;
var result = key.Activate(token=process.env.TOKEN, RSAPubKey, ProductId=Number(process.env.PRODUCT_ID), Key=process.env.LICENSE_KEY, MachineCode=Helpers.GetMachineCode(), 0, false, 0, 0, process.env.LICENSE_SERVER_URL);

result.then(function(license) {

    // success
    
    // Please see https://app.cryptolens.io/docs/api/v3/model/LicenseKey for a complete list of parameters.
    console.log(license.Created);

}).catch(function(error) {
    // in case of an error, an Error object is returned.
    console.log(error.message);
});
