-- cxr-triage auto-routing for Orthanc (Lua, built into Orthanc; no plugin needed).
--
-- When a study becomes stable (no new instance for Orthanc's "StableAge" seconds), forward its
-- chest radiograph series (Modality CR or DX, with a CR or DX image SOP class) to the DICOM
-- modality named "triage" in "DicomModalities": the cxr-triage gateway.
--
-- * Never forwarded: anything else, and in particular Structured Reports and Secondary Captures,
--   which is what cxr-triage sends back to the PACS; forwarding them would loop.
-- * Each series is marked with the number of its instances that went out (user metadata
--   "CxrTriageForwarded", declared in "UserMetadata"), so a study that becomes stable again
--   because our results arrived is not sent twice, while a series that gained instances is.
-- * A failed forward leaves the series unmarked and logs it; the next time the study becomes
--   stable it is tried again (or send it by hand from Orthanc Explorer).
-- * The log names Orthanc IDs and DICOM UIDs only, never a patient's name, ID or accession number.

local TARGET_MODALITY = 'triage'
local FORWARDED_MARK = 'CxrTriageForwarded'
local MODALITIES = { CR = true, DX = true }
local RADIOGRAPH_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1'] = true,        -- Computed Radiography Image Storage
  ['1.2.840.10008.5.1.4.1.1.1.1'] = true,      -- Digital X-Ray Image Storage - For Presentation
  ['1.2.840.10008.5.1.4.1.1.1.1.1'] = true,    -- Digital X-Ray Image Storage - For Processing
}

local function log(message)
  print('cxr-triage autoroute: ' .. message)
end

-- Number of the series' instances already forwarded (0 when never).
local function forwardedCount(seriesId)
  local names = ParseJson(RestApiGet('/series/' .. seriesId .. '/metadata'))
  for _, name in ipairs(names) do
    if name == FORWARDED_MARK then
      return tonumber(RestApiGet('/series/' .. seriesId .. '/metadata/' .. FORWARDED_MARK)) or 0
    end
  end
  return 0
end

-- A radiograph series: Modality CR or DX, and its first instance of a CR or DX SOP class
-- (a Secondary Capture that copied the radiograph's Modality is still not forwarded).
local function isRadiographSeries(series)
  if not MODALITIES[series['MainDicomTags']['Modality'] or ''] then
    return false
  end
  local first = series['Instances'][1]
  if first == nil then
    return false
  end
  local sopClass = RestApiGet('/instances/' .. first .. '/metadata/SopClassUid')
  return RADIOGRAPH_SOP_CLASSES[sopClass] == true
end

function OnStableStudy(studyId, tags, metadata)
  local studyUid = tags['StudyInstanceUID'] or studyId
  local resources = {}
  local counts = {}
  for _, seriesId in ipairs(ParseJson(RestApiGet('/studies/' .. studyId))['Series']) do
    local series = ParseJson(RestApiGet('/series/' .. seriesId))
    local count = #series['Instances']
    if isRadiographSeries(series) and count > forwardedCount(seriesId) then
      table.insert(resources, seriesId)
      counts[seriesId] = count
    end
  end
  if #resources == 0 then
    log('study ' .. studyUid .. ': no new CR/DX series, not forwarded')
    return
  end

  local request = DumpJson({ Resources = resources, Synchronous = true }, true)
  local ok, answer = pcall(RestApiPost, '/modalities/' .. TARGET_MODALITY .. '/store', request)
  local result = ok and answer and ParseJson(answer) or nil
  if result == nil or (result['FailedInstancesCount'] or 0) > 0 then
    log('study ' .. studyUid .. ': forwarding ' .. #resources .. ' series to "'
        .. TARGET_MODALITY .. '" FAILED; will retry when the study is stable again')
    return
  end
  for _, seriesId in ipairs(resources) do
    RestApiPut('/series/' .. seriesId .. '/metadata/' .. FORWARDED_MARK, tostring(counts[seriesId]))
  end
  log(string.format('study %s: forwarded %d CR/DX series (%d instances) to "%s"',
                   studyUid, #resources, result['InstancesCount'], TARGET_MODALITY))
end

