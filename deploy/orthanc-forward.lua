-- Orthanc (compose stack): forward every mammogram it stores to cem-node, the modality
-- "cem-node" of orthanc.json, so that a study sent or uploaded to Orthanc is analysed.
--
-- Only images of Modality MG are forwarded, and never what cem-node itself sent: its
-- results (SEG, SR, PR) come back with calling AE title CEM_NODE. Sending a study
-- again is harmless: cem-node keeps an identical instance once.
-- To forward by hand instead, drop this script from "LuaScripts" in orthanc.json and use
-- Orthanc Explorer ("Send to DICOM modality") or POST /modalities/cem-node/store.

function OnStoredInstance(instanceId, tags, metadata, origin)
   if origin ~= nil and origin['RequestOrigin'] == 'Lua' then
      return  -- stored by a script: never forward (no loops)
   end
   if origin ~= nil and origin['RemoteAet'] == 'CEM_NODE' then
      return  -- the node's own results
   end
   if tags['Modality'] ~= 'MG' then
      return
   end
   local request = {}
   request['Resources'] = { instanceId }
   request['Asynchronous'] = true
   RestApiPost('/modalities/cem-node/store', DumpJson(request, true))
end
