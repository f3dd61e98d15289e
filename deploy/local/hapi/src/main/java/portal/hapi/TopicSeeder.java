package portal.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.topic.ISubscriptionTopicLoader;
import ca.uhn.fhir.jpa.topic.SubscriptionTopicRegistry;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.cache.BaseResourceCacheSynchronizer;
import java.nio.file.Files;
import java.nio.file.Path;
import org.hl7.fhir.r4.model.Bundle;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.ApplicationArguments;
import org.springframework.boot.ApplicationRunner;

/**
 * Loads the EHR's SubscriptionTopics (R4 `Basic` resources in the Backport IG's form) from
 * the transaction Bundle named by `--portal.topics-file`, then makes HAPI's topic registry
 * read them at once: HAPI only notices new R4 topics on its periodic (one-minute) resync.
 * Prints PORTAL_TOPICS_READY when done, which the launcher waits for.
 */
public class TopicSeeder implements ApplicationRunner {
  private static final Logger LOG = LoggerFactory.getLogger(TopicSeeder.class);

  private final FhirContext fhirContext;
  private final IFhirSystemDao<Bundle, ?> systemDao;
  private final ISubscriptionTopicLoader loader;
  private final SubscriptionTopicRegistry registry;

  @Value("${portal.topics-file:}")
  private String topicsFile;

  public TopicSeeder(
      FhirContext fhirContext,
      IFhirSystemDao<Bundle, ?> systemDao,
      ISubscriptionTopicLoader loader,
      SubscriptionTopicRegistry registry) {
    this.fhirContext = fhirContext;
    this.systemDao = systemDao;
    this.loader = loader;
    this.registry = registry;
  }

  @Override
  public void run(ApplicationArguments args) throws Exception {
    if (topicsFile != null && !topicsFile.isEmpty()) {
      String text = Files.readString(Path.of(topicsFile));
      Bundle bundle = fhirContext.newJsonParser().parseResource(Bundle.class, text);
      systemDao.transaction(new SystemRequestDetails(), bundle);
      if (loader instanceof BaseResourceCacheSynchronizer synchronizer) {
        synchronizer.forceRefresh();
      }
    }
    LOG.info("PORTAL_TOPICS_READY topics={}", registry.size());
  }
}
